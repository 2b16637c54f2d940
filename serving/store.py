"""A pushed version on disk, and reading it back: what serving.build writes and the server and the explorer read.

<push_dir>/<name>/<version>/ holds the serving SavedModel; its assets.extra/ holds the ScaNN index (scann/,
index.json, embeddings.npy, item_ids.txt), the run's config.json, and features/<set>/ for every other feature
set (embeddings.npy and the feature model that made them). A feature model is a SavedModel in TFX's layout
(<model>/Format-Serving/) whose serving_default maps image bytes to features.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
from numpy.lib import format as npy
from scann.scann_ops.py import scann_ops_pybind

from collabfeat import storage

EXTRA = "assets.extra"


def versions_on_disk(model_dir: str) -> list[int]:
    """Integer-named version directories holding a SavedModel (hidden temporary ones never match)."""
    return [
        int(n)
        for n in storage.listdir(model_dir)
        if n.isdigit() and storage.exists(os.path.join(model_dir, n, "saved_model.pb"))
    ]


def newest_version(model_dir: str) -> str:
    """The path of the newest pushed version; FileNotFoundError when there is none."""
    versions = versions_on_disk(model_dir)
    if not versions:
        raise FileNotFoundError(f"no pushed version under {model_dir}: run `./run demo` first")
    return os.path.join(model_dir, str(max(versions)))


def next_version(model_dir: str) -> int:
    """The number of the next version to push: the time in seconds, or above every existing one."""
    existing = [int(n) for n in storage.listdir(model_dir) if n.isdigit()]
    return max([int(time.time())] + [v + 1 for v in existing])


def search(idx: dict, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows and scores for each query, searched with the index's chosen settings
    (at least k candidates are re-scored exactly)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    meta = idx["meta"]
    if meta["kind"] == "brute_force":
        return idx["searcher"].search_batched(q, final_num_neighbors=k)
    return idx["searcher"].search_batched(
        q,
        final_num_neighbors=k,
        pre_reorder_num_neighbors=max(k, meta["reorder"]),
        leaves_to_search=meta.get("leaves_to_search"),
    )


def save_index(
    searcher, settings: dict, item_ids: list[str], embeddings: np.ndarray, directory: str, served: str = ""
) -> None:
    """The searcher, the settings it is searched with (`choose`), the embeddings, the item ids and
    the name of the feature set they are (`served`: config.FEATURE_SETS).
    `directory`: a local path or a URI (ScaNN writes local files: through a local copy)."""
    with storage.local_dir(directory) as local:
        os.makedirs(os.path.join(local, "scann"), exist_ok=True)
        # Relative asset paths: the directory is copied into each pushed version and must load there.
        searcher.serialize(os.path.join(local, "scann"), relative_path=True)
        meta = {key: settings[key] for key in ("kind", "leaves", "leaves_to_search", "reorder") if key in settings}
        with open(os.path.join(local, "index.json"), "w") as f:
            json.dump({**meta, "items": len(item_ids), **({"served": served} if served else {})}, f)
        np.save(os.path.join(local, "embeddings.npy"), np.asarray(embeddings, np.float32))
        with open(os.path.join(local, "item_ids.txt"), "w") as f:
            f.write("\n".join(item_ids) + "\n")


def load_index(directory: str) -> dict:
    """What save_index() wrote (a local path or a URI). A local index's embeddings are memory-mapped: a
    large catalogue's stay on disk, read by the pages a search touches."""
    with storage.local_copy(directory) as local:
        with open(os.path.join(local, "item_ids.txt")) as f:
            ids = [line.rstrip("\n") for line in f if line.strip()]
        with open(os.path.join(local, "index.json")) as f:
            meta = json.load(f)
        return {
            "searcher": scann_ops_pybind.load_searcher(os.path.join(local, "scann")),
            "meta": meta,
            "item_ids": ids,
            "embeddings": np.load(
                os.path.join(local, "embeddings.npy"), mmap_mode="r" if storage.is_local(directory) else None
            ),
        }


def write_feature_set(directory: str, name: str, embeddings, model: str = "") -> None:
    """Another feature set's catalogue embeddings (and its feature model, a SavedModel directory,
    to embed new images), for comparison. `embeddings`: an array, or an iterable of row batches
    written one at a time (bounded memory)."""
    with storage.local_dir(os.path.join(directory, "features", name)) as out:
        write_npy(
            os.path.join(out, "embeddings.npy"), [embeddings] if isinstance(embeddings, np.ndarray) else embeddings
        )
        if model:
            with storage.local_copy(model) as local:
                shutil.copytree(local, os.path.join(out, "model"))


def write_npy(path: str, batches) -> None:
    """Row batches [b, d] -> one float32 .npy file [sum b, d], streamed through disk: the rows go
    to a side file first, then behind the header that their final count makes."""
    rows, dim = 0, 0
    with open(path + ".rows", "w+b") as raw:
        for b in batches:
            b = np.ascontiguousarray(b, dtype="<f4")
            rows, dim = rows + len(b), b.shape[1]
            raw.write(b.tobytes())
        raw.seek(0)
        with open(path, "wb") as f:
            npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            shutil.copyfileobj(raw, f, 16 << 20)
    os.remove(path + ".rows")
