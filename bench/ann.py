"""Nearest-neighbour search: ScaNN (our index settings) against exact numpy search and faiss-cpu
(exact IndexFlatIP and IVF), side by side: queries/s (batched) and recall@10 against exact search.

Data: the newest pushed catalogue embeddings (serving/models/<name>/<v>/assets.extra/embeddings.npy,
present after `./run demo`), and a synthetic clustered set of N x 64 unit vectors (default 1M)."""
from __future__ import annotations

import os
import sys

import numpy as np

from bench.common import save, table, timed
from collabfeat import config as config_lib
from collabfeat.serving import index as scann_index, push

K = 10


def synthetic(n: int, d: int = 64, clusters: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n + 1000)] + 0.6 * rng.normal(size=(n + 1000, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def newest_catalogue(cfg):
    """The newest pushed version's catalogue embeddings (.npy path), or None before any push."""
    try:
        version = push.newest_version(os.path.join(cfg.serving.push_dir, cfg.serving.model_name))
    except FileNotFoundError:
        return None
    return os.path.join(version, push.EXTRA, "embeddings.npy")


def compare(name: str, db: np.ndarray, queries: np.ndarray, cfg) -> list:
    import faiss
    exact, t_exact = timed(scann_index.exact_top_k, db, queries, K)
    exact = exact[0]
    rows = [{"data": name, "method": "exact numpy", "build s": 0.0, "q/s": len(queries) / t_exact, "recall@10": 1.0}]

    (searcher, settings), t_build = timed(scann_index.build, db, cfg.index)
    (found, _), t = timed(scann_index.search, {"searcher": searcher, "meta": settings}, queries, K)
    knobs = "".join(f" {key}={settings[key]}" for key in ("leaves", "leaves_to_search", "reorder") if key in settings)
    rows.append({"data": name, "method": f"scann {settings['kind']}{knobs}", "build s": t_build, "q/s": len(queries) / t,
                 "recall@10": scann_index.recall(found, exact, K)})

    flat = faiss.IndexFlatIP(db.shape[1])
    _, t_build = timed(flat.add, db)
    (_, found), t = timed(flat.search, queries, K)
    rows.append({"data": name, "method": "faiss flat (exact)", "build s": t_build, "q/s": len(queries) / t,
                 "recall@10": scann_index.recall(found, exact, K)})

    nlist = max(1, int(4 * np.sqrt(len(db))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(db.shape[1]), db.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    def build_ivf():
        ivf.train(db)
        ivf.add(db)
    _, t_build = timed(build_ivf)
    ivf.nprobe = max(1, nlist // 16)
    (_, found), t = timed(ivf.search, queries, K)
    rows.append({"data": name, "method": f"faiss ivf{nlist} nprobe{ivf.nprobe}", "build s": t_build,
                 "q/s": len(queries) / t, "recall@10": scann_index.recall(found, exact, K)})
    base = rows[0]["q/s"]
    for r in rows:
        r["speed vs exact"] = r["q/s"] / base
    return rows


def run(n_synthetic: int = 1_000_000, cfg=None) -> dict:
    cfg = cfg or config_lib.Config()
    rows = []
    cat = newest_catalogue(cfg)
    if cat:
        emb = np.load(cat).astype(np.float32)
        rng = np.random.default_rng(1)
        rows += compare(f"catalogue {len(emb)}x{emb.shape[1]}", emb, emb[rng.choice(len(emb), min(1000, len(emb)), replace=False)], cfg)
    else:
        print("no pushed catalogue embeddings found (run `./run demo` first); synthetic data only")
    db, queries = synthetic(n_synthetic)
    rows += compare(f"synthetic {len(db)}x{db.shape[1]}", db, queries, cfg)
    print(table(rows, ["data", "method", "build s", "q/s", "recall@10", "speed vs exact"]))
    print("saved", save("ann", {"rows": rows}))
    return {"rows": rows}


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
