"""A ScaNN index over the catalogue's embeddings (through scann_ops_pybind; see env/scann_shim.py)."""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Dict, List, Tuple

import numpy as np
from scann.scann_ops.py import scann_ops_pybind

from collabfeat import topk
from collabfeat.config import IndexConfig

# Below this many items a tree gains nothing: search all of them, exactly scored.
BRUTE_FORCE_BELOW = 2000


def build(embeddings: np.ndarray, cfg: IndexConfig):
    """embeddings: L2-normalised float32 [n, d]; dot product = cosine similarity."""
    db = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(db)
    b = scann_ops_pybind.builder(db, min(cfg.num_neighbors, n), "dot_product")
    if kind(n) == "brute_force":
        return b.score_brute_force().build()
    leaves = cfg.leaves or max(2, int(math.sqrt(n)))
    search = cfg.leaves_to_search or max(1, leaves // 3)
    dims = 2 if db.shape[1] % 2 == 0 else 1
    return (b.tree(num_leaves=leaves, num_leaves_to_search=search, training_sample_size=min(n, 250_000))
            .score_ah(dims, anisotropic_quantization_threshold=0.2)
            .reorder(cfg.reorder).build())


def exact_top_k(db: np.ndarray, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    return topk.top_k(queries, db, k)


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top-k that a search found."""
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(found, exact)]))


def recall_against_exact(searcher, db: np.ndarray, queries: np.ndarray, k: int) -> float:
    approx, _ = searcher.search_batched(np.ascontiguousarray(queries, dtype=np.float32), final_num_neighbors=k)
    return recall(approx, exact_top_k(db, queries, k)[0], k)


def kind(n: int) -> str:
    return "brute_force" if n < BRUTE_FORCE_BELOW else "tree_ah"


def search(idx: Dict, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k rows and scores for each query; at least k candidates are re-scored exactly."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if idx["meta"]["kind"] == "brute_force":
        return idx["searcher"].search_batched(q, final_num_neighbors=k)
    return idx["searcher"].search_batched(q, final_num_neighbors=k,
                                          pre_reorder_num_neighbors=max(k, idx["meta"]["reorder"]))


def save(searcher, item_ids: List[str], embeddings: np.ndarray, directory: str, cfg: IndexConfig) -> None:
    os.makedirs(os.path.join(directory, "scann"), exist_ok=True)
    # Relative asset paths: the directory is copied into each pushed version and must load there.
    searcher.serialize(os.path.join(directory, "scann"), relative_path=True)
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"kind": kind(len(item_ids)), "reorder": cfg.reorder, "items": len(item_ids)}, f)
    np.save(os.path.join(directory, "embeddings.npy"), embeddings.astype(np.float32))
    with open(os.path.join(directory, "item_ids.txt"), "w") as f:
        f.write("\n".join(item_ids) + "\n")


def load(directory: str) -> Dict:
    with open(os.path.join(directory, "item_ids.txt")) as f:
        ids = [line.rstrip("\n") for line in f if line.strip()]
    with open(os.path.join(directory, "index.json")) as f:
        meta = json.load(f)
    return {"searcher": scann_ops_pybind.load_searcher(os.path.join(directory, "scann")), "meta": meta,
            "item_ids": ids, "embeddings": np.load(os.path.join(directory, "embeddings.npy"))}


def write_map(embeddings: np.ndarray, directory: str, seed: int = 0, sample: int = 20000) -> None:
    """A 2-D UMAP of the embeddings (cosine), and the items snapped to a grid: `grid` lists item
    rows in row-major grid order (rows by y, each row by x), so neighbours on the map sit side by side.
    UMAP is fitted on a seeded sample of at most `sample` items; every other item is placed at the
    similarity-weighted mean of its 5 nearest sampled items (chunked: bounded memory and time)."""
    n = len(embeddings)
    if n >= 10:
        import umap
        fit = topk.sample(n, sample, seed)
        xy = np.zeros((n, 2), np.float32)
        xy[fit] = umap.UMAP(n_neighbors=min(15, len(fit) - 1), metric="cosine",
                            random_state=seed).fit_transform(embeddings[fit])
        rest = np.setdiff1d(np.arange(n), fit)
        if len(rest):
            near, sims = topk.top_k(embeddings[rest], embeddings[fit], 5)
            w = np.maximum(sims, 0) + 1e-6
            xy[rest] = (xy[fit][near] * w[:, :, None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
    else:
        xy = np.c_[np.arange(n), np.zeros(n)].astype(np.float32)
    cols = int(math.ceil(math.sqrt(n)))
    by_y = np.argsort(xy[:, 1], kind="stable")
    grid = np.concatenate([row[np.argsort(xy[row, 0], kind="stable")] for row in np.array_split(by_y, math.ceil(n / cols))])
    with open(os.path.join(directory, "map.json"), "w") as f:
        json.dump({"x": xy[:, 0].round(4).tolist(), "y": xy[:, 1].round(4).tolist(), "cols": cols,
                   "grid": grid.tolist()}, f)


def write_feature_set(directory: str, name: str, embeddings, backbone_path: str = "") -> None:
    """Another feature set's catalogue embeddings (and its CNN, to embed new images), for comparison.
    `embeddings`: an array, or an iterable of row batches written one at a time (bounded memory)."""
    out = os.path.join(directory, "features", name)
    os.makedirs(out, exist_ok=True)
    write_npy(os.path.join(out, "embeddings.npy"), [embeddings] if isinstance(embeddings, np.ndarray) else embeddings)
    if backbone_path:
        shutil.copy(backbone_path, os.path.join(out, "backbone.h5"))


def write_npy(path: str, batches) -> None:
    """Row batches [b, d] -> one float32 .npy file [sum b, d], streamed through disk: the rows go
    to a side file first, then behind the header that their final count makes."""
    from numpy.lib import format as npy
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
