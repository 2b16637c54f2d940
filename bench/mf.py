"""MF: our TFRS model (weighted ALS by our numba kernel, and the SGD objectives) against `implicit`'s ALS,
side by side on the same weighted interactions, the same seeded 90/10 split and the same threads.

Data sets: the default simulated logs (weighted exactly as the Beam transform weighs them),
MovieLens (real ratings; collabfeat/movielens.py), and NAME=ROOT: the weighted pairs a pipeline run
wrote (its Transform's output under the pipeline root ROOT, every split), e.g. the Behance-size set
or a fraction of it from `bench scale --behance`. For each: wall seconds of training (median of
`repeats` runs for the two ALS), recall@k on the held-out pairs with its evaluation time reported
apart, and the trade-off curves: recall@k and cumulative training seconds after every sweep/epoch.
Usage: ./run bench mf [--datasets simulated,movielens] [--repeats 3] [--sweeps 20] [--als-only]
       ./run bench mf --datasets behance-0.1=runs/bench-scale/mf-behance-0.1/collabfeat/root --als-only
--als-only: the two ALS side by side and popularity, without the SGD objectives and the curves (at
millions of pairs those take hours). Each data set's result replaces its own in bench/results/mf.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from bench.common import RESULTS, default_interactions, save, stamp, step, table
from collabfeat import config as config_lib
from collabfeat import examples, movielens
from trainer import mf

ALS_ITERATIONS = 15  # implicit's default, and its settings from the first version of this benchmark
ALS_SETTINGS = dict(regularization=0.05, alpha=10.0)


def run_pairs(root: str):
    """A pipeline run's weighted pairs (its Transform's output, every split):
    (users, items, weights, n_users, n_items)."""
    [uri] = glob.glob(os.path.join(root, "Transform", "transformed_examples", "*"))
    parts = [b for split in ("train", "eval") for b in examples.column_batches(uri, split, mf.PAIR_SPEC)]
    u, i = (np.concatenate([b[k] for b in parts]) for k in ("user_idx", "item_idx"))
    w = np.concatenate([b["rating"] for b in parts]).astype(np.float64)
    return u, i, w, int(u.max()) + 1, int(i.max()) + 1


def load(name: str, cfg):
    if "=" in name:
        u, i, w, n_users, n_items = run_pairs(name.split("=", 1)[1])
    elif name == "simulated":
        u, i, w, n_users, n_items = default_interactions(cfg)
    elif name == "movielens":
        u, i, w, n_users, n_items, _ = movielens.interactions()
    else:
        raise SystemExit(f"bench mf: unknown data set {name!r} (simulated, movielens)")
    return u, i, w, n_users, n_items


class Clock:
    """Training seconds with the time spent in callbacks (recall evaluation) taken out."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def training(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def evaluate(self, fn):
        t = time.perf_counter()
        out = fn()
        self.paused += time.perf_counter() - t
        return out


def implicit_als(mat, dim, iterations, callback=None, clock=None):
    import implicit  # lazy: an optional benchmark dependency
    from threadpoolctl import threadpool_limits  # lazy: implicit's dependency

    hook = None
    if callback is not None:
        hook = lambda it, _secs, _loss: callback(
            it + 1, mf.Factors(np.asarray(als.user_factors), np.asarray(als.item_factors), [])
        )
    with threadpool_limits(1, "blas"):  # implicit's own advice: its threads, not OpenBLAS's, use the cores
        als = implicit.als.AlternatingLeastSquares(
            factors=dim, iterations=iterations, random_state=0, num_threads=os.cpu_count(), **ALS_SETTINGS
        )
        als.fit(mat, show_progress=False, callback=hook)
    return mf.Factors(np.asarray(als.user_factors), np.asarray(als.item_factors), [])


def run_dataset(name: str, cfg, repeats: int, sweeps: int, als_only: bool = False) -> dict:
    u, i, w, n_users, n_items = load(name, cfg)
    held = np.random.default_rng(0).random(len(u)) < 0.1
    train_pairs, eval_pairs = np.c_[u[~held], i[~held]], np.c_[u[held], i[held]]
    rating = (w / w.max())[~held]
    mat = sp.csr_matrix((w[~held].astype(np.float32), (u[~held], i[~held])), shape=(n_users, n_items))
    k = cfg.mf.recall_k

    def recall(f):  # -> (recall@k, seconds it took)
        t = time.perf_counter()
        return mf.recall_at_k(f, train_pairs, eval_pairs, k), time.perf_counter() - t

    recall(mf.popularity(i[~held], n_users, n_items))  # warm-up: the first evaluation pays for page faults
    ours = [
        config_lib.MFConfig(**{**cfg.mf.__dict__, **o})
        for o in (
            {"objective": "mse", "solver": "als"},
            {"objective": "mse", "solver": "adam"},
            {"objective": "softmax"},
        )
    ]
    fits = {
        "tfrs-als (ours)": (lambda: mf.train(u[~held], i[~held], rating, n_users, n_items, ours[0]), ours[0].epochs),
        "implicit-als": (lambda: implicit_als(mat, cfg.mf.dim, ALS_ITERATIONS), ALS_ITERATIONS),
    }
    rows = []
    # The two ALS alternate, `repeats` times each: the median of each is compared side by side.
    times, factors = {m: [] for m in fits}, {}
    step(f"{name}: our ALS and implicit's, alternating, {repeats} runs each")
    for _ in tqdm(range(repeats), desc=f"  {name}: ALS runs", disable=None, leave=False):
        for m, (fn, _) in fits.items():
            t = time.perf_counter()
            factors[m] = fn()
            times[m].append(time.perf_counter() - t)
    for m, (_, passes) in fits.items():
        r, eval_secs = recall(factors[m])
        rows.append(
            {
                "model": m,
                "passes": passes,
                "seconds": statistics.median(times[m]),
                "runs": len(times[m]),
                f"recall@{k}": r,
                "eval seconds": eval_secs,
            }
        )
    step(f"{name}: the SGD objectives ({ours[1].epochs} epochs each)")
    for label, mcfg in () if als_only else (("tfrs-mse-adam", ours[1]), ("tfrs-softmax-adam", ours[2])):
        t = time.perf_counter()
        factors = mf.train(u[~held], i[~held], rating, n_users, n_items, mcfg)
        secs = time.perf_counter() - t
        r, eval_secs = recall(factors)
        rows.append(
            {
                "model": label,
                "passes": mcfg.epochs,
                "seconds": secs,
                "runs": 1,
                f"recall@{k}": r,
                "eval seconds": eval_secs,
            }
        )
    r, eval_secs = recall(mf.popularity(i[~held], n_users, n_items))
    rows.append({"model": "popularity", f"recall@{k}": r, "eval seconds": eval_secs})
    base = rows[1]
    for row in rows[:-1]:
        row["time vs ALS"] = row["seconds"] / base["seconds"]
        row["recall vs ALS"] = row[f"recall@{k}"] / base[f"recall@{k}"]

    # Trade-off curves: recall after every sweep/epoch against the training seconds up to it.
    curves = {}

    def curve(label, fit):
        points, clock = [], Clock()

        def hook(step, factors):
            r = clock.evaluate(lambda: recall(factors)[0])
            points.append({"passes": step, "seconds": clock.training(), f"recall@{k}": r})

        fit(hook)
        curves[label] = points

    if not als_only:  # the curves: minutes of recall evaluations at millions of pairs
        step(f"{name}: trade-off curves (recall after every sweep or epoch)")
        curve(
            "tfrs-als (ours)",
            lambda hook: mf.train(
                u[~held],
                i[~held],
                rating,
                n_users,
                n_items,
                config_lib.MFConfig(**{**ours[0].__dict__, "epochs": sweeps}),
                callback=hook,
            ),
        )
        curve("implicit-als", lambda hook: implicit_als(mat, cfg.mf.dim, sweeps, callback=hook))
        for label, mcfg in (("tfrs-mse-adam", ours[1]), ("tfrs-softmax-adam", ours[2])):
            fit = lambda hook, mcfg=mcfg: mf.train(u[~held], i[~held], rating, n_users, n_items, mcfg, callback=hook)
            curve(label, fit)

    print(
        f"\n{name}: {n_users} users x {n_items} items, {len(train_pairs)} train / {len(eval_pairs)} "
        f"held-out pairs, {os.cpu_count()} threads"
    )
    print(
        table(
            rows, ["model", "passes", "seconds", "runs", f"recall@{k}", "time vs ALS", "recall vs ALS", "eval seconds"]
        )
    )
    print("trade-off (passes: recall@k / training seconds):")
    for label, points in curves.items():
        print(
            f"  {label:18s} " + "  ".join(f"{p['passes']}: {p[f'recall@{k}']:.3f}/{p['seconds']:.1f}s" for p in points)
        )
    return {
        "users": n_users,
        "items": n_items,
        "train_pairs": int(len(train_pairs)),
        "eval_pairs": int(len(eval_pairs)),
        "threads": os.cpu_count(),
        "rows": rows,
        "curves": curves,
    }


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="bench mf")
    ap.add_argument("--datasets", default="simulated,movielens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweeps", type=int, default=20, help="length of the trade-off curves (ALS)")
    ap.add_argument("--als-only", action="store_true", help="the two ALS and popularity only")
    args = ap.parse_args(argv)
    cfg = config_lib.Config()
    path = os.path.join(RESULTS, "mf.json")
    result = {"datasets": {}}
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    for name in args.datasets.split(","):
        measured = run_dataset(name, cfg, args.repeats, args.sweeps, args.als_only)
        result["datasets"][name.split("=", 1)[0]] = {**stamp(), **measured}
        result.update(stamp())
        print("saved", save("mf", result))
    return result


if __name__ == "__main__":
    run()
