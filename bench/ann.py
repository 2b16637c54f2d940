"""Nearest-neighbour search: recall-speed curves, ann-benchmarks style.

Every method is built once per data set, then searched with each value of its search-time knob:
ScaNN tree + AH (leaves_to_search x the re-scored list length), faiss IVF-Flat (nprobe), faiss HNSW32
(efSearch); exact numpy, ScaNN brute force and faiss flat are one point each. A point is the
queries/s of one thread answering the queries (batched) and its recall@10 against exact search. The
q/s at recall 0.90 / 0.95 / 0.99 is read off each method's frontier (its best q/s at each recall),
interpolated linearly between the frontier points on either side.

Data sets: the newest pushed catalogue (<serving.push_dir>/<name>/<v>/assets.extra/embeddings.npy,
present after `./run demo`), `--embeddings FILE.npy` (e.g. a large run's catalogue embeddings), and a
synthetic clustered set of N x 64 unit vectors (default 1M).

    ./run bench ann [--synthetic 1000000] [--embeddings FILE.npy] [--queries 1000]

Writes bench/results/ann.json, and the curves as ann.html (plotly, self-contained) and ann.png
(rendered by Debian's Chromium through Playwright).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable

import numpy as np

from bench.common import RESULTS, save, step, table
from collabfeat import config as config_lib
from collabfeat import topk
from serving import store
from serving.build import index as scann_index

K = 10
RECALLS = (0.90, 0.95, 0.99)
CHROMIUM = "/usr/bin/chromium"


def synthetic(n: int, d: int = 64, clusters: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n + 1000)] + 0.6 * rng.normal(size=(n + 1000, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def newest_catalogue(cfg):
    """The newest pushed version's catalogue embeddings (.npy path), or None before any push."""
    try:
        version = store.newest_version(os.path.join(cfg.serving.push_dir, cfg.serving.model_name))
    except FileNotFoundError:
        return None
    return os.path.join(version, store.EXTRA, "embeddings.npy")


def _point(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, exact: np.ndarray, knob: str) -> dict:
    """One search setting: the best q/s of 2 passes over the queries, and its recall@K."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        found = search(queries)
        best = min(best, time.perf_counter() - start)
    return {"knob": knob, "q/s": len(queries) / best, "recall": scann_index.recall(np.asarray(found), exact, K)}


def _geometric(top: int, steps: int = 12) -> list[int]:
    return sorted({max(1, int(round(top ** (i / (steps - 1))))) for i in range(steps)})


def curves(name: str, db: np.ndarray, queries: np.ndarray) -> list[dict]:
    import faiss  # lazy: an optional benchmark dependency

    faiss.omp_set_num_threads(1)  # searches run on one thread, like ScaNN's search_batched
    n, d = db.shape
    exact = topk.top_k(queries, db, K)[0]
    out = []

    def method(label: str, build: Callable, settings: list, search: Callable):
        start = time.perf_counter()
        built = build()
        seconds = time.perf_counter() - start
        points = [_point(lambda q: search(built, q, s), queries, exact, str(s)) for s in settings]
        out.append({"data": name, "method": label, "build s": seconds, "points": points})
        step(f"{name}: {label} built in {seconds:.1f} s, {len(points)} search settings timed")

    method("exact numpy", lambda: db, [None], lambda b, q, s: topk.top_k(q, b, K)[0])
    method(
        "scann brute force",
        lambda: scann_index.brute_force_searcher(db, K),
        [None],
        lambda b, q, s: b.search_batched(q, final_num_neighbors=K)[0],
    )
    leaves = scann_index.default_leaves(n)
    tree_settings = [(t, r) for r in (K, 2 * K, 5 * K, 10 * K, 40 * K) for t in _geometric(leaves, 14)]
    method(
        f"scann tree{leaves}+AH (leaves_to_search, reorder)",
        lambda: scann_index.tree_searcher(db, K, leaves, 40 * K),
        tree_settings,
        lambda b, q, s: b.search_batched(
            q, final_num_neighbors=K, leaves_to_search=s[0], pre_reorder_num_neighbors=s[1]
        )[0],
    )

    def faiss_build(index, train=True):
        def build():
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # building may use every core
            if train:
                index.train(db)
            index.add(db)
            faiss.omp_set_num_threads(1)
            return index

        return build

    def faiss_search(param):
        def search(b, q, s):
            if param:
                setattr(b if param == "nprobe" else b.hnsw, param, s)
            return b.search(q, K)[1]

        return search

    method("faiss flat", faiss_build(faiss.IndexFlatIP(d), train=False), [None], faiss_search(None))
    nlist = max(1, int(4 * math.sqrt(n)))
    method(
        f"faiss ivf{nlist} (nprobe)",
        faiss_build(faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)),
        _geometric(nlist, 14),
        faiss_search("nprobe"),
    )
    method(
        "faiss hnsw32 (efSearch)",
        faiss_build(faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT), train=False),
        [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512],
        faiss_search("efSearch"),
    )
    for m in out:
        m["frontier"] = frontier(m["points"])
        for r in RECALLS:
            m[f"q/s @{r}"] = qps_at(m["frontier"], r)
        m["best recall"] = max(p["recall"] for p in m["points"])
    return out


def frontier(points: list[dict]) -> list[dict]:
    """The points no other point beats on both recall and q/s, by increasing recall."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (-p["recall"], -p["q/s"])):
        if p["q/s"] > best:
            out.append(p)
            best = p["q/s"]
    return out[::-1]


def qps_at(front: list[dict], recall: float) -> float | None:
    """q/s at this recall on the frontier, linear between the frontier points on either side
    (the fastest point at or above it if none is below); None if the method never reaches it."""
    above = [p for p in front if p["recall"] >= recall]
    if not above:
        return None
    hi = above[0]
    below = [p for p in front if p["recall"] < recall]
    if not below or hi["recall"] == recall:
        return hi["q/s"]
    lo = below[-1]
    t = (recall - lo["recall"]) / (hi["recall"] - lo["recall"])
    return lo["q/s"] + t * (hi["q/s"] - lo["q/s"])


def plot(results: list[dict], stem: str) -> list[str]:
    """The curves, one panel per data set: an HTML file and, if Chromium is there, a PNG."""
    import plotly.graph_objects as go  # lazy: plotly, only to draw
    from plotly.colors import qualitative  # lazy: plotly, only to draw
    from plotly.subplots import make_subplots  # lazy: plotly, only to draw

    sets = list(dict.fromkeys(m["data"] for m in results))
    fig = make_subplots(rows=1, cols=len(sets), subplot_titles=sets)
    colours = {}
    for col, name in enumerate(sets, 1):
        for m in (m for m in results if m["data"] == name):
            label = re.sub(r"\d+", "", m["method"].split(" (")[0])  # one colour per method on every panel
            colour = colours.setdefault(label, qualitative.D3[len(colours) % len(qualitative.D3)])
            f = m["frontier"]
            fig.add_trace(
                go.Scatter(
                    x=[p["recall"] for p in f],
                    y=[p["q/s"] for p in f],
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    line={"color": colour},
                    mode="lines+markers",
                    text=[p["knob"] for p in f],
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="recall@10", row=1, col=col)
        fig.update_yaxes(title_text="queries/s (1 thread)", type="log", row=1, col=col)
    fig.update_layout(width=620 * len(sets), height=520, title="recall against speed (frontier of each method)")
    html = stem + ".html"
    fig.write_html(html, include_plotlyjs=True)
    out = [html]
    if os.path.exists(CHROMIUM):
        from playwright.sync_api import sync_playwright  # lazy: the browser, only for screenshots

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 620 * len(sets), "height": 540})
            page.goto("file://" + os.path.abspath(html))
            page.wait_for_selector(".main-svg")
            page.screenshot(path=stem + ".png")
            browser.close()
        out.append(stem + ".png")
    return out


def run(argv: list[str] | None = None, cfg=None) -> dict:
    p = argparse.ArgumentParser(prog="bench ann")
    p.add_argument("--synthetic", type=int, default=1_000_000, help="rows of the synthetic set (0: none)")
    p.add_argument("--embeddings", default="", help="a .npy file of embeddings to add as a data set")
    p.add_argument("--queries", type=int, default=1000)
    args = p.parse_args(argv or [])
    cfg = cfg or config_lib.load()
    sets = []
    cat = newest_catalogue(cfg)
    if cat:
        sets.append(("pushed catalogue", np.load(cat)))
    else:
        print("no pushed catalogue embeddings found (run `./run demo` first)")
    if args.embeddings:
        sets.append((os.path.basename(args.embeddings), np.load(args.embeddings)))
    results = []
    for label, emb in sets:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        rows = topk.sample(len(emb), args.queries, 1)
        results += curves(f"{label} {len(emb)}x{emb.shape[1]}", emb, emb[rows])
    if args.synthetic:
        db, queries = synthetic(args.synthetic)
        results += curves(f"synthetic {len(db)}x{db.shape[1]}", db, queries[: args.queries])
    cols = ["data", "method", "build s", "best recall"] + [f"q/s @{r}" for r in RECALLS]
    print(table(results, cols))
    verdict = target(results)
    if verdict:
        print(verdict)
    print("saved", save("ann", {"rows": results, "target": verdict}), *plot(results, os.path.join(RESULTS, "ann")))
    return {"rows": results, "target": verdict}


def target(results: list[dict]) -> str:
    """The issue's target: ScaNN at or above every faiss curve at recall 0.95 on the largest synthetic set."""
    synth = [m for m in results if m["data"].startswith("synthetic")]
    if not synth:
        return ""
    scann = max((m["q/s @0.95"] or 0) for m in synth if m["method"].startswith("scann"))
    faiss = {m["method"]: m["q/s @0.95"] or 0 for m in synth if m["method"].startswith("faiss")}
    ok = all(scann >= v for v in faiss.values())
    return (
        f"target (ScaNN >= every faiss curve at recall 0.95, {synth[0]['data']}): {'met' if ok else 'NOT met'}: "
        f"ScaNN {scann:.0f} q/s; " + ", ".join(f"{k} {v:.0f}" for k, v in faiss.items())
    )


if __name__ == "__main__":
    run(sys.argv[1:])
