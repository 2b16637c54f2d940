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

from collabfeat import storage
from serving.scann_lib import scann_ops_pybind

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


def load_index(directory: str, searcher: bool = True) -> dict:
    """What save_index() wrote (a local path or a URI); searcher=False: all but the ScaNN searcher
    (None), for a reader of the catalogue that does not search it. A local index's embeddings are
    memory-mapped: a large catalogue's stay on disk, read by the pages a search touches."""
    with storage.local_copy(directory) as local:
        with open(os.path.join(local, "item_ids.txt")) as f:
            ids = [line.rstrip("\n") for line in f if line.strip()]
        with open(os.path.join(local, "index.json")) as f:
            meta = json.load(f)
        return {
            "searcher": scann_ops_pybind.load_searcher(os.path.join(local, "scann")) if searcher else None,
            "meta": meta,
            "item_ids": ids,
            "embeddings": np.load(
                os.path.join(local, "embeddings.npy"), mmap_mode="r" if storage.is_local(directory) else None
            ),
        }


class EmbeddingFile:
    """A local .npy file of float32 embeddings [n, d], read by slices of rows: a scan holds SLICE_BYTES
    at a time, so the reader's memory stays bounded whatever the catalogue's size (the file's pages
    sit in the kernel's cache, shared and reclaimable, not in the process). Thread-safe (pread)."""

    SLICE_BYTES = 32 << 20

    def __init__(self, path: str):
        header = np.load(path, mmap_mode="r")
        if header.dtype != np.float32 or header.ndim != 2 or not header.flags.c_contiguous:
            raise ValueError(f"{path}: embeddings must be float32 [n, d] in C order, not {header.dtype} {header.shape}")
        self.path, self.shape, self.offset = path, header.shape, header.offset
        del header
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an array of their own."""
        d = self.shape[1]
        out = np.empty((max(0, stop - start), d), np.float32)
        view, at, done = memoryview(out).cast("B"), self.offset + start * d * 4, 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], at + done)
            if n <= 0:
                raise OSError(f"{self.path}: the file ended at row {start + done // (4 * d)} of {self.shape[0]}")
            done += n
        return out

    def __getitem__(self, row: int) -> np.ndarray:
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} of {len(self)}")
        row %= len(self)
        return self.rows(row, row + 1)[0]

    def scores(self, vec: np.ndarray) -> np.ndarray:
        """Every row's dot product with `vec` [d], a slice of rows at a time."""
        n, d = self.shape
        step = max(1, self.SLICE_BYTES // (4 * d))
        out = np.empty(n, np.float32)
        for start in range(0, n, step):
            out[start : start + step] = self.rows(start, min(n, start + step)) @ np.asarray(vec, np.float32)
        return out

    def close(self) -> None:
        os.close(self.fd)


def project(x: np.ndarray, projection: dict) -> np.ndarray:
    """Embeddings [n, d] -> their projection (serving/build/index.py reduction()), unit-normed again:
    dot product = cosine."""
    y = np.asarray(x, np.float32) @ projection["components"].T
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def write_feature_set(directory: str, name: str, embeddings, model: str = "", projection: dict | None = None) -> None:
    """Another feature set's catalogue embeddings (and its feature model, a SavedModel directory,
    to embed new images), for comparison. `embeddings`: an array, or an iterable of row batches
    written one at a time (bounded memory). `projection`: what the embeddings were projected with
    (serving/build/index.py reduction()), kept to project a new image's embedding the same way."""
    with storage.local_dir(os.path.join(directory, "features", name)) as out:
        write_npy(
            os.path.join(out, "embeddings.npy"), [embeddings] if isinstance(embeddings, np.ndarray) else embeddings
        )
        if projection is not None:
            np.save(os.path.join(out, "projection.npy"), projection["components"])
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
