"""Shared benchmark plumbing: timing, the default interactions, and result files."""

from __future__ import annotations

import csv
import json
import os
import threading
import time

import numpy as np
from tabulate import tabulate

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def step(message: str) -> None:
    """A benchmark's progress line: what it starts on now."""
    print(f"[bench] {time.strftime('%H:%M:%S')} {message}", flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def default_interactions(cfg, item_ids: bool = False):
    """The default simulated logs weighted exactly as the Beam log transform weighs them
    (transform/aggregate.py), rows of unknown items dropped, without popularity filtering:
    (users, items, ratings, n_users, n_items), and with `item_ids` the id of each item index."""

    from pipeline.data import prepare_data  # lazy: this benchmark's stack, imported when it runs
    from transform.aggregate import pair_weight, validate_row  # lazy: this benchmark's stack, imported when it runs

    cfg = prepare_data(cfg)
    weights = cfg.transform.event_weights
    with open(cfg.data.items) as f:
        catalogue = {row["item_id"] for row in csv.DictReader(f)}
    counts: dict = {}
    with open(os.path.join(cfg.data.logs, "logs.csv")) as f:
        for row in csv.DictReader(f):
            status, v = validate_row(
                {"user": row["user_id"], "item": row["item_id"], "event": row["event"]}, weights, catalogue
            )
            if status == "ok":
                per = counts.setdefault((v[0], v[1]), {})
                per[v[2]] = per.get(v[2], 0) + 1
    users = {u: i for i, u in enumerate(sorted({u for u, _ in counts}))}
    items = {t: i for i, t in enumerate(sorted({t for _, t in counts}))}
    rows = [(users[u], items[t], pair_weight(c, weights)) for (u, t), c in counts.items()]
    rows = [r for r in rows if r[2] > 0]
    arr = np.array(rows)
    out = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], len(users), len(items)
    return out + (sorted(items, key=items.get),) if item_ids else out


def stamp() -> dict:
    """When and on what a result was measured."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {ram:.0f} GB"}


def save(name: str, result: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return path


def save_trial(name: str, what: str, result: dict, same: list[str]) -> str:
    """Adds `result` to the trials of bench/results/<name>.json, replacing a trial that agrees with
    it on every key of `same` (a rerun of the same choice)."""
    path = os.path.join(RESULTS, f"{name}.json")
    trials = []
    if os.path.exists(path):
        with open(path) as f:
            trials = json.load(f).get("trials", [])
    trials = [t for t in trials if any(t.get(key) != result.get(key) for key in same)] + [result]
    return save(name, {"what": what, "trials": trials})


def table(rows: list[dict], columns: list[str], fmt: str = "simple") -> str:
    """Rows (dicts) as a text table of `columns` (tabulate's format: "simple" for the console,
    "github" for the docs); floats to 4 significant digits."""
    return tabulate(
        [[_fmt(r.get(c)) for c in columns] for r in rows], headers=columns, tablefmt=fmt, disable_numparse=True
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _files(path: str) -> dict:
    """(device, inode) -> size of every file under path (a file's hard links once)."""
    if os.path.isfile(path):
        st = os.stat(path)
        return {(st.st_dev, st.st_ino): st.st_size}
    return {k: v for d, _, fs in os.walk(path) for f in fs for k, v in _files(os.path.join(d, f)).items()}


def disk_mb(path: str, besides: str = "") -> float:
    """The size on disk of a file or a directory, MB, each file once however many hard links it has,
    and without the files it shares (hard links) with `besides`."""
    shared = _files(besides) if besides else {}
    return sum(v for k, v in _files(path).items() if k not in shared) / 2**20


class Sampler:
    """The resident memory of a process, sampled every 50 ms: its peak."""

    def __init__(self, pid: int):
        import psutil  # lazy: a benchmark dependency

        self.proc, self.peak, self.stop, self.ended = psutil.Process(pid), 0, False, psutil.NoSuchProcess
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, self.now())
            except self.ended:  # it ended: its peak is what was sampled
                return
            time.sleep(0.05)

    def close(self) -> int:
        self.stop = True
        self.thread.join()
        return self.peak
