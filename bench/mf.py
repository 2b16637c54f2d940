"""MF training throughput and held-out recall@k: TFRS (ours) against `implicit`'s ALS, side by side
on the same weighted interactions of the default data and the same seeded split."""
from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from bench.common import default_interactions, save, table, timed
from collabfeat import config as config_lib
from collabfeat.trainer import mf


def run(cfg=None) -> dict:
    cfg = cfg or config_lib.Config()
    u, i, w, n_users, n_items = default_interactions(cfg)
    rng = np.random.default_rng(0)
    held = rng.random(len(u)) < 0.1
    train_pairs, eval_pairs = np.c_[u[~held], i[~held]], np.c_[u[held], i[held]]
    k = cfg.mf.recall_k
    rows = []

    for objective in ("mse", "softmax"):
        mcfg = config_lib.MFConfig(**{**cfg.mf.__dict__, "objective": objective})
        f, secs = timed(mf.train, u[~held], i[~held], (w / w.max())[~held], n_users, n_items, mcfg)
        rows.append({"model": f"tfrs-{objective}", "epochs": mcfg.epochs, "seconds": secs,
                     "pairs/s": len(train_pairs) * mcfg.epochs / secs,
                     f"recall@{k}": mf.recall_at_k(f, train_pairs, eval_pairs, k)})

    import implicit
    mat = sp.csr_matrix((w[~held].astype(np.float32), (u[~held], i[~held])), shape=(n_users, n_items))
    als = implicit.als.AlternatingLeastSquares(factors=cfg.mf.dim, regularization=0.05, alpha=10.0,
                                               iterations=15, random_state=0, num_threads=os.cpu_count())
    _, secs = timed(als.fit, mat, show_progress=False)
    f = mf.Factors(np.asarray(als.user_factors), np.asarray(als.item_factors), [])
    rows.append({"model": "implicit-als", "epochs": 15, "seconds": secs,
                 "pairs/s": len(train_pairs) * 15 / secs, f"recall@{k}": mf.recall_at_k(f, train_pairs, eval_pairs, k)})
    popularity = mf.popularity(i[~held], n_users, n_items)
    rows.append({"model": "popularity", f"recall@{k}": mf.recall_at_k(popularity, train_pairs, eval_pairs, k)})

    base = rows[2]
    for r in rows[:2]:
        r["time vs ALS"] = r["seconds"] / base["seconds"]
        r["recall vs ALS"] = r[f"recall@{k}"] / base[f"recall@{k}"]
    result = {"users": n_users, "items": n_items, "train_pairs": int(len(train_pairs)),
              "eval_pairs": int(len(eval_pairs)), "rows": rows}
    print(f"MF on {n_users} users x {n_items} items, {len(train_pairs)} train / {len(eval_pairs)} held-out pairs")
    print(table(rows, ["model", "epochs", "seconds", "pairs/s", f"recall@{k}", "time vs ALS", "recall vs ALS"]))
    print("saved", save("mf", result))
    return result


if __name__ == "__main__":
    run()
