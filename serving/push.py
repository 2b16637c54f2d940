"""Pushing a version for serving: <push_dir>/<model name>/<version>/

  saved_model.pb, variables/        the serving SavedModel (serving/export.py)
  assets.extra/scann/               the serialised ScaNN searcher
  assets.extra/item_ids.txt         row i of the index is this item id
  assets.extra/embeddings.npy       the catalogue's embeddings
  assets.extra/config.json          the run settings the Pusher was given (config.USES): item tables, CNN input

The version is written under a hidden temporary name and renamed into place, so a server
polling the directory never sees a half-written version. Versions are increasing integers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import List

from collabfeat import config as config_lib, storage
from collabfeat.serving import export, index as scann_index

EXTRA = "assets.extra"


def versions_on_disk(model_dir: str) -> List[int]:
    """Integer-named version directories holding a SavedModel (hidden temporary ones never match)."""
    return [int(n) for n in storage.listdir(model_dir)
            if n.isdigit() and storage.exists(os.path.join(model_dir, n, "saved_model.pb"))]


def newest_version(model_dir: str) -> str:
    """The path of the newest pushed version; FileNotFoundError when there is none."""
    versions = versions_on_disk(model_dir)
    if not versions:
        raise FileNotFoundError(f"no pushed version under {model_dir}: run `./run demo` first")
    return os.path.join(model_dir, str(max(versions)))


def next_version(model_dir: str) -> int:
    existing = [int(n) for n in storage.listdir(model_dir) if n.isdigit()]
    return max([int(time.time())] + [v + 1 for v in existing])


def push(net, index_dir: str, cfg) -> str:
    """cfg: a Config, or the Pusher's settings (config.settings); recorded in the version.
    serving.push_dir may be a URI (gs://...): the version is made locally and copied there, its
    saved_model.pb last, so that a server polling the directory only sees a complete version."""
    push_dir = cfg.serving.push_dir
    if storage.is_local(push_dir):
        push_dir = os.path.abspath(push_dir)
    model_dir = os.path.join(push_dir, cfg.serving.model_name)
    storage.makedirs(model_dir)
    version = next_version(model_dir)
    final = os.path.join(model_dir, str(version))
    with storage.local_copy(index_dir) as index_local, tempfile.TemporaryDirectory(prefix="collabfeat-push-") as work:
        # A local version is made beside its final place and renamed into it (atomic).
        tmp = os.path.join(model_dir if storage.is_local(model_dir) else work, f".tmp-{version}")
        shutil.rmtree(tmp, ignore_errors=True)
        idx = scann_index.load(index_local)
        export.export(net, cfg.cnn.image_size, idx["embeddings"], idx["item_ids"], cfg.serving.max_k, tmp)
        extra = os.path.join(tmp, EXTRA)
        shutil.copytree(index_local, extra, ignore=shutil.ignore_patterns("report.json"))
        with open(os.path.join(extra, "config.json"), "w") as f:
            f.write(config_lib.as_json(cfg))
        if storage.is_local(model_dir):
            os.rename(tmp, final)
            return final
        os.rename(os.path.join(tmp, "saved_model.pb"), os.path.join(work, "saved_model.pb"))
        storage.copytree(tmp, final)
        storage.copy(os.path.join(work, "saved_model.pb"), os.path.join(final, "saved_model.pb"))
    return final
