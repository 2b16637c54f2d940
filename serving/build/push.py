"""Pushing a version for serving: <push_dir>/<model name>/<version>/

  saved_model.pb, variables/        the serving SavedModel (serving/build/export.py)
  assets.extra/scann/               the serialised ScaNN searcher
  assets.extra/item_ids.txt         row i of the index is this item id
  assets.extra/embeddings.npy       the catalogue's embeddings
  assets.extra/config.json          the run settings the Pusher was given (config.USES): item tables, CNN input

The index's files are hard links to the Indexer's where both are on one filesystem, else copies.
The version is written under a hidden temporary name and renamed into place, so a server
polling the directory never sees a half-written version. Versions are increasing integers.

A push given held-out labelled images is guarded: the new version replaces the newest served one
only if its precision@k there is at least the served version's plus `eval.served_margin`. Both are
measured the same way, through each version's own serving signature on the same image bytes, so
what is compared is exactly what a client gets (compare()).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from collabfeat import config as config_lib
from collabfeat import feature_model, storage
from collabfeat.catalogue import split_images
from serving import store
from serving.build import export
from trainer import heldout as trainer_heldout
from trainer.evaluate import describe, overall, retrieval_metrics


def _link_or_copy(src: str, dst: str) -> None:
    """The index's files go into a version as hard links where both are on one filesystem: the
    Indexer's artifact is never written again, and the comparison sets' catalogue embeddings (1.1 GB
    at 60,000 images, raw pixels 0.7 GB of it) are neither copied nor stored twice. Else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def embed_with(version: str, blobs: Sequence[bytes], batch: int = 256):
    """The L2-normalised embeddings a pushed version's (or a feature model's) serving_default gives for image bytes."""
    return feature_model.embed(version, feature_model.in_batches(blobs, batch))


class Heldout(NamedTuple):
    """One facet's held-out images for compare(): their bytes, each image's value (-1: none), and
    which of them query (a boolean mask; None: all), as the Evaluator scores them."""

    blobs: Sequence[bytes]
    values: np.ndarray
    queries: np.ndarray | None = None


def compare(candidate: str, served: str, heldout: dict[str, Heldout], cfg) -> dict:
    """Retrieval precision@k and mAP of two versions on the same held-out images, with the
    Evaluator's measure (trainer/evaluate.py): heldout is facet -> Heldout (or a pair of image
    bytes and values), scored on eval.bless_on (the mean over the facets, or one of them). "better":
    the candidate's precision@k is at least the served version's plus eval.served_margin."""
    heldout = {facet: Heldout(*h) for facet, h in heldout.items()}
    embedded = {}

    def scores(version):
        out = {}
        for facet, h in heldout.items():
            if (version, id(h.blobs)) not in embedded:  # facets of one split share its images
                embedded[version, id(h.blobs)] = embed_with(version, h.blobs)
            values = np.asarray(h.values)
            have = values >= 0
            out[facet] = retrieval_metrics(
                embedded[version, id(h.blobs)][have],
                values[have],
                cfg.eval.k,
                cfg.eval.max_queries,
                cfg.cnn.seed,
                None if h.queries is None else np.asarray(h.queries)[have],
            )
        return out

    mine = scores(candidate)
    gc.collect()  # the candidate's loaded SavedModel (its catalogue too), before the served one is loaded
    try:
        theirs = scores(served)
    except Exception as e:  # a version TensorFlow cannot load is not being served either
        return {
            "served_version": int(os.path.basename(served)),
            "better": True,
            "error": f"{type(e).__name__}: {e}"[:500],
        }
    facets = {facet: {"candidate": mine[facet], "served": theirs[facet]} for facet in heldout}
    total = overall(facets, cfg.eval.bless_on)
    metric = next(key for key in total["candidate"] if key.startswith("precision@"))
    images = {facet: int((np.asarray(h.values) >= 0).sum()) for facet, h in heldout.items()}
    return {
        "served_version": int(os.path.basename(served)),
        "metric": metric,
        "images": images,
        "on": describe(images, cfg.eval.bless_on),
        "margin": cfg.eval.served_margin,
        "facets": facets,
        "candidate": total["candidate"],
        "served": total["served"],
        "better": total["candidate"][metric] >= total["served"][metric] + cfg.eval.served_margin,
    }


def push(features, index_dir: str, cfg, heldout: dict[str, tuple[Sequence[bytes], np.ndarray]] | None = None) -> dict:
    """-> {"pushed", "destination", "version", "compared", "why"}.
    features: the feature model to serve (its path: a Model artifact's Format-Serving directory, or
    an feature_model.Embedder), wrapped with the index's catalogue (export.export).
    cfg: a Config, or the Pusher's settings (config.settings); recorded in the version.
    heldout: facet -> (image bytes, values) of held-out images (compare()); when given and a version
    is being served, the new version is pushed only if compare() finds it better.
    serving.push_dir may be a URI (gs://...): the version is made locally and copied there, its
    saved_model.pb last, so that a server polling the directory only sees a complete version."""
    push_dir = cfg.serving.push_dir
    if storage.is_local(push_dir):
        push_dir = os.path.abspath(push_dir)
    model_dir = os.path.join(push_dir, cfg.serving.model_name)
    storage.makedirs(model_dir)
    version = store.next_version(model_dir)
    final = os.path.join(model_dir, str(version))
    with storage.local_copy(index_dir) as index_local, tempfile.TemporaryDirectory(prefix="collabfeat-push-") as work:
        # A local version is made beside its final place and renamed into it (atomic).
        tmp = os.path.join(model_dir if storage.is_local(model_dir) else work, f".tmp-{version}")
        shutil.rmtree(tmp, ignore_errors=True)
        idx = store.load_index(index_local, searcher=False)  # the catalogue, for the SavedModel
        export.export(features, idx["embeddings"], idx["item_ids"], cfg.serving.max_k, tmp)
        gc.collect()  # the export's graph and its copy of the catalogue, before any version is loaded to compare
        extra = os.path.join(tmp, store.EXTRA)
        # The files a version writes itself are never taken from the index: a write to a hard link
        # would change the Indexer's artifact.
        shutil.copytree(
            index_local,
            extra,
            ignore=shutil.ignore_patterns("report.json", "config.json", "report.html"),
            copy_function=_link_or_copy,
        )
        with open(os.path.join(extra, "config.json"), "w") as f:
            f.write(config_lib.as_json(cfg))
        compared = None
        if heldout is not None and store.versions_on_disk(model_dir):
            compared = compare(tmp, store.newest_version(model_dir), heldout, cfg)
            if not compared["better"]:
                shutil.rmtree(tmp)
                c, s, m = compared["candidate"], compared["served"], compared["metric"]
                return {
                    "pushed": False,
                    "destination": None,
                    "compared": compared,
                    "why": f"{m} {c[m]:.4f} on {compared['on']} is below the served "
                    f"version {compared['served_version']}'s {s[m]:.4f}"
                    + (f" plus eval.served_margin {compared['margin']}" if compared["margin"] else "")
                    + ": that version stays served",
                }
        if storage.is_local(model_dir):
            os.rename(tmp, final)
        else:
            os.rename(os.path.join(tmp, "saved_model.pb"), os.path.join(work, "saved_model.pb"))
            storage.copytree(tmp, final)
            storage.copy(os.path.join(work, "saved_model.pb"), os.path.join(final, "saved_model.pb"))
    why = (
        "nothing was served yet"
        if heldout is not None and compared is None
        else "not compared (no held-out images given)"
        if compared is None
        else f"the served version {compared['served_version']} could not be scored ({compared['error']})"
        if "error" in compared
        else f"{compared['metric']} {compared['candidate'][compared['metric']]:.4f} on {compared['on']}, "
        f"against the served version {compared['served_version']}'s "
        f"{compared['served'][compared['metric']]:.4f}"
    )
    return {"pushed": True, "destination": final, "version": version, "compared": compared, "why": why}


def heldout_images(images_uri: str, split_names: list[str]) -> dict[str, Heldout]:
    """The Evaluator's facets and images (trainer/heldout.py), in its order, for compare()."""
    facets = trainer_heldout.facets(images_uri, split_names)
    blobs = {}
    for sp in sorted({sp for f in facets.values() for sp in f.splits}):
        stored = split_images(images_uri, sp)
        blobs[sp] = [stored[i] for i in trainer_heldout.id_order(images_uri, sp)[1]]
    return {name: Heldout(sum((blobs[sp] for sp in f.splits), []), f.values, f.queries) for name, f in facets.items()}
