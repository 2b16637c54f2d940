"""The item side at catalogue scale: the explorer over a pushed version of N catalogue items.

A version of N items (default 10^6) is made from the newest pushed version (or --version): its
SavedModel, its catalogue embeddings grown to N rows (every real embedding, then noisy copies, as
`bench ann` grows them: bench/ann.py grown), a ScaNN index the Indexer's `auto` choice builds over
them (serving/build/index.py), the 2-D map (write_map), and each other feature set grown the same
way (a set the source stores in full dims, from before the Indexer reduced them, is first projected
as the Indexer now projects it: index.explorer_dims), unless its N rows would take more than
--max-set-gb on disk (then it is left out, and the result says how large it would be). A copy's
item id is its source's with "~c" appended, and shows its source's image.

The explorer (`collabfeat explore`, its own process) then serves that version, and every page kind
is requested --requests times with random items: info, a page of the grid (map order and id
order), the map, a query and an item's position under each feature set, and a thumbnail.
Recorded: each page kind's median, 95th percentile and slowest milliseconds against the 300 ms
target, the explorer's start-up seconds, and its resident memory (peak, sampled) against the index's
own size (the ScaNN files and the served embeddings) and the 4 GB target beyond it.

    ./run bench explorer [--items 1000000] [--requests 20] [--max-set-gb 6] [--version DIR] [--reuse]

--reuse serves the version an earlier run made at the same size (the build takes minutes at 10^6).

Writes bench/results/explorer.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np

from bench.ann import grown
from bench.common import Sampler, disk_mb, save, stamp, step, table
from collabfeat import config as config_lib
from collabfeat import topk
from serving import store
from serving.build import index as scann_index

TARGETS = {"page_ms": 300, "memory_beyond_index_mb": 4096}


def make_version(source: str, n: int, work: str, max_set_gb: float, cfg) -> dict:
    """A version of n catalogue items under work/models/collabfeat/1 (see the module's docstring)."""
    out = os.path.join(work, "models", "collabfeat", "1")
    shutil.rmtree(os.path.join(work, "models"), ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(store.EXTRA))
    src, extra = os.path.join(source, store.EXTRA), os.path.join(out, store.EXTRA)
    os.makedirs(extra)
    base = np.load(os.path.join(src, "embeddings.npy"))
    with open(os.path.join(src, "item_ids.txt")) as f:
        ids0 = [line.rstrip("\n") for line in f if line.strip()]
    with open(os.path.join(src, "index.json")) as f:
        served = json.load(f).get("served", "")
    m = len(ids0)
    ids = ids0 + [f"{ids0[r % m]}~{r // m}" for r in range(m, n)]
    step(f"growing the served embeddings to {n:,} rows")
    emb = np.concatenate(list(grown(base, n)))
    step("building the index (the Indexer's auto choice)")
    start = time.time()
    searcher, settings = scann_index.build(emb, cfg.index, emb[topk.sample(n, scann_index.TUNING_QUERIES, 1)])
    built = time.time() - start
    store.save_index(searcher, settings, ids, emb, extra, served)
    del searcher
    step("the map")
    start = time.time()
    scann_index.write_map(emb, extra, sample=cfg.index.map_sample)
    mapped = time.time() - start
    del emb
    sets, left_out, reduced = [served], {}, {}
    for name in sorted(os.listdir(os.path.join(src, "features"))):
        where = os.path.join(src, "features", name)
        sbase = np.load(os.path.join(where, "embeddings.npy"))
        projection = None
        if not os.path.exists(os.path.join(where, "projection.npy")):  # stored before sets were reduced
            projection = scann_index.reduction(sbase[topk.sample(m, cfg.index.map_sample, 2)], cfg.index.explorer_dims)
            if projection is not None:  # as the Indexer stores it now
                reduced[name] = {"dims": int(sbase.shape[1]), "stored dims": int(projection["components"].shape[0])}
                sbase = store.project(sbase, projection)
        gb = n * sbase.shape[1] * 4 / 2**30
        if gb > max_set_gb:
            left_out[name] = {"dim": int(sbase.shape[1]), "gb at n": round(gb, 1)}
            continue
        step(f"feature set {name}: {sbase.shape[1]} dims, {gb:.1f} GB")
        model = os.path.join(where, "model")
        store.write_feature_set(extra, name, grown(sbase, n), model if os.path.isdir(model) else "", projection)
        if os.path.exists(os.path.join(where, "projection.npy")):
            shutil.copy(os.path.join(where, "projection.npy"), os.path.join(extra, "features", name))
        sets.append(name)
    # The item table (copies show their source's image) and the run's config pointing at it.
    with open(os.path.join(src, "config.json")) as f:
        run_cfg = json.load(f)
    with open(run_cfg["data"]["items"], newline="") as f:
        rows = {r["item_id"]: r for r in csv.DictReader(f)}
    table_path = os.path.join(work, "items.csv")
    with open(table_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "image", "label", "style"])
        for j, item in enumerate(ids):
            r = rows.get(ids0[j % m], {})
            w.writerow([item, r.get("image", ""), r.get("label", ""), r.get("style", "")])
    run_cfg["data"] = {**run_cfg["data"], "items": table_path, "eval_items": ""}
    with open(os.path.join(extra, "config.json"), "w") as f:
        json.dump(run_cfg, f)
    info = {
        "items": n,
        "source items": m,
        "index": {k: settings[k] for k in ("kind", "leaves", "leaves_to_search", "reorder") if k in settings},
        "index build s": built,
        "map s": mapped,
        "index mb": disk_mb(os.path.join(extra, "scann")) + disk_mb(os.path.join(extra, "embeddings.npy")),
        "feature sets": sets,
        "left out": left_out,
        "reduced": reduced,
    }
    with open(os.path.join(work, "version.json"), "w") as f:
        json.dump(info, f)
    return {**info, "ids": ids}


def made_version(work: str) -> dict:
    """What make_version() made under `work` earlier (--reuse)."""
    with open(os.path.join(work, "version.json")) as f:
        info = json.load(f)
    with open(os.path.join(work, "models", "collabfeat", "1", store.EXTRA, "item_ids.txt")) as f:
        return {**info, "ids": [line.rstrip("\n") for line in f if line.strip()]}


def measure(work: str, info: dict, requests: int, seed: int = 0) -> dict:
    base = os.path.join(work, "models", "collabfeat")
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collabfeat", "explore", "--model-base-path", base, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if "explorer on" not in line:
            raise RuntimeError(f"bench explorer: the explorer did not start: {line!r}")
        started = time.time() - start
        url = line.split()[3]
        sampler = Sampler(proc.pid)
        at_start = sampler.now()
        rng = np.random.default_rng(seed)
        ids = info["ids"]

        def item():
            return urllib.parse.quote(ids[int(rng.integers(len(ids)))], safe="")

        pages = {
            "info": lambda: "api/info",
            "grid page (map order)": lambda: f"api/items?page={int(rng.integers(len(ids) // 48))}&size=48",
            "grid page (id order)": lambda: f"api/items?order=id&page={int(rng.integers(len(ids) // 48))}&size=48",
            "map": lambda: "api/map",
            "thumbnail": lambda: f"img/{item()}?size=96",
        }
        for name in info["feature sets"]:
            pages[f"query: {name}"] = lambda name=name: f"api/query?set={name}&source=item&key={item()}"
            pages[f"position: {name}"] = lambda name=name: (
                f"api/position?set={name}&source=item&key={item()}&item={item()}"
            )
        rows = []
        for kind, path in pages.items():
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                with urllib.request.urlopen(url + path(), timeout=120) as r:
                    r.read()
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            rows.append(
                {
                    "page": kind,
                    "median ms": statistics.median(times),
                    "p95 ms": times[min(len(times) - 1, int(0.95 * len(times)))],
                    "max ms": times[-1],
                    "< 300 ms (p95)": times[min(len(times) - 1, int(0.95 * len(times)))] < TARGETS["page_ms"],
                }
            )
        peak = sampler.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "start s": started,
        "rss at start mb": at_start / 2**20,
        "peak rss mb": peak / 2**20,
        "beyond index mb": peak / 2**20 - info["index mb"],
        "pages": rows,
    }


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench explorer")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=20, help="requests of each page kind")
    p.add_argument("--max-set-gb", type=float, default=6.0, help="leave out feature sets larger than this at N")
    p.add_argument("--version", default="", help="the version to grow (default: the newest pushed one)")
    p.add_argument("--work", default=os.path.join("runs", "bench-explorer"))
    p.add_argument("--reuse", action="store_true", help="serve the version an earlier run made at this size")
    args = p.parse_args(argv)
    cfg = config_lib.load()
    source = args.version or store.newest_version(os.path.join(cfg.serving.push_dir, cfg.serving.model_name))
    work = os.path.abspath(os.path.join(args.work, str(args.items)))
    info = made_version(work) if args.reuse else make_version(source, args.items, work, args.max_set_gb, cfg)
    step("serving it: every page kind, timed")
    measured = measure(work, info, args.requests)
    result = {
        **stamp(),
        "targets": TARGETS,
        "source": os.path.relpath(source),
        **{k: v for k, v in info.items() if k != "ids"},
        **measured,
    }
    result["met"] = {
        "pages": all(r["< 300 ms (p95)"] for r in measured["pages"]),
        "memory": measured["beyond index mb"] <= TARGETS["memory_beyond_index_mb"],
    }
    print(table(measured["pages"], list(measured["pages"][0])))
    print(
        f"{args.items:,} items; index {info['index']} ({info['index mb']:.0f} MB, "
        f"built in {info['index build s']:.0f} s); "
        f"explorer started in {measured['start s']:.1f} s, peak {measured['peak rss mb']:.0f} MB "
        f"({measured['beyond index mb']:.0f} MB beyond the index); left out: {info['left out']}"
    )
    print("saved", save("explorer", result))
    return result
