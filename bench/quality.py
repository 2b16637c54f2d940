"""The quality table of demo runs, kept as a result: each run's facets (precision@10 / mAP of
every feature set), the targets met or missed, and the pipeline's seconds.

With --seeds N, N demos run one after another, the i-th with every seed of the run (the
simulator's, MF's and the CNNs') moved by i (i = 0 is the default demo), each recorded as seed-i,
and the table's mean and range per cell are recorded as "seeds": whether each target holds on the
means, and whether its margin (the collaborative mean minus what the target needs) exceeds the seeds' range
of both values.

Usage: ./run bench quality --record RUN_DIR [--name demo] [--repeat-of NAME]
  reads RUN_DIR/report.json (a `./run demo` run directory, runner.output_dir/<pipeline_name>),
  adds it to bench/results/quality.json under NAME (a second run of the same seed: --repeat-of the
  first, and whether their tables are identical to 3 decimals is recorded), and prints the table
  as Markdown for the docs.
       ./run bench quality --seeds 3 [--set k=v ...]   (about 10 minutes a demo)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from bench.common import RESULTS, save, step


def table(run: dict) -> str:
    """A recorded run's quality table as Markdown: feature sets as rows, facets as columns."""
    from collabfeat.features import FEATURE_NAMES  # lazy: this benchmark's stack, imported when it runs

    facets = run["facets"]
    lines = [
        "| features | "
        + " | ".join(f"{f} ({v['images']} images, chance {v['chance']:.3f})" for f, v in facets.items())
        + " |",
        "| --- |" + " ---: |" * len(facets),
    ]
    for name, label in FEATURE_NAMES.items():
        if any(name in v["table"] for v in facets.values()):
            served = " (served)" if name == run["served"] else ""
            lines.append(
                f"| {label}{served} | "
                + " | ".join(
                    f"{v['table'][name]['precision@10']:.3f} / {v['table'][name]['mAP']:.3f}"
                    if name in v["table"]
                    else "-"
                    for v in facets.values()
                )
                + " |"
            )
    return "\n".join(lines)


def rounded(run: dict) -> dict:
    """The table as the docs print it: every metric of every cell to 3 decimals."""
    return {
        f: {n: {k: round(x, 3) for k, x in m.items()} for n, m in v["table"].items()} for f, v in run["facets"].items()
    }


SEEDS = ("simulator.seed", "mf.seed", "cnn.seed")  # what --seeds moves


def over_seeds(entries: list) -> dict:
    """The runs' tables as mean and range per cell, with a row "served" (each run's served
    features), and each target (evaluate.TARGETS) of the served row on the means: whether it
    holds, and whether its margin exceeds the range of both values over the runs."""
    from trainer.evaluate import targets  # lazy: this benchmark's stack, imported when it runs

    metric = entries[0]["metric"]
    facets: dict[str, dict[str, Any]] = {}
    for f in entries[0]["facets"]:
        tables = [{**e["facets"][f]["table"], "served": e["facets"][f]["table"][e["served"]]} for e in entries]
        names = set.intersection(*(set(t) for t in tables))
        table = {}
        for n in sorted(names):
            v = [t[n][metric] for t in tables]
            table[n] = {
                metric: float(np.mean(v)),
                "min": float(min(v)),
                "max": float(max(v)),
                "range": float(max(v) - min(v)),
            }
        facets[f] = {"table": table, "chance": float(np.mean([e["facets"][f]["chance"] for e in entries]))}
    checks = targets(facets, metric, ["served"])
    for c in checks:
        facet = c["target"].split(":")[0]
        values: list = c["values"]
        (mine, a), (other, _) = values
        spread = max(facets[facet]["table"][mine]["range"], facets[facet]["table"][other]["range"])
        # the margin is over what the target needs (another's value, plus an offset or times a ratio)
        c["margin"], c["range"] = round(a - c["needed"], 4), round(spread, 4)
        c["exceeds_range"] = bool(c["met"] and a - c["needed"] > spread)
    return {
        "runs": len(entries),
        "metric": metric,
        "served": [e["served"] for e in entries],
        "facets": facets,
        "targets": checks,
        "targets_met": sum(c["met"] for c in checks),
        "targets_beyond_range": sum(c["exceeds_range"] for c in checks),
    }


def entry_of(report: dict) -> dict:
    """What quality.json keeps of a run's report."""
    from trainer.evaluate import in_order  # lazy: this benchmark's stack, imported when it runs

    e = report["evaluation"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "pipeline_seconds": report["seconds"],
        "served": e["served"],
        "metric": e["metric"],
        "facets": {
            f: {k: v[k] for k in ("images", "queries", "chance", "table") if k in v}
            for f, v in in_order(e["facets"]).items()
        },
        "targets": [{k: c[k] for k in ("target", "met", "needed", "values")} for c in e["targets"]],
        "targets_met": sum(c["met"] for c in e["targets"]),
        "datasheet": report.get("datasheet", {}).get("source"),
    }


def _setting(cfg, key: str) -> Any:
    """A setting of a Config by its dotted name ("cnn.seed")."""
    return functools.reduce(getattr, key.split("."), cfg)


def _seeds(n: int, overrides: list) -> None:
    """Runs n demos (the i-th with every seed moved by i) and records them and their summary."""
    from collabfeat import config as config_lib  # lazy: this benchmark's stack, imported when it runs

    cfg = config_lib.load(overrides=overrides)
    entries = {}
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="collabfeat-quality-") as out:
            moved = [f"{key}={_setting(cfg, key) + i}" for key in SEEDS]
            step(f"demo {i + 1} of {n}: {', '.join(moved)}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "collabfeat",
                    "demo",
                    "--no-cache",
                    *sum((["--set", o] for o in overrides + moved + [f"runner.output_dir={out}"]), []),
                ],
                check=True,
            )
            with open(os.path.join(out, cfg.runner.pipeline_name, "report.json")) as f:
                entries[f"seed-{i}"] = {**entry_of(json.load(f)), "seeds": moved}
    runs = _load()
    runs.update(entries)
    summary = over_seeds(list(entries.values()))
    save("quality", {**_saved(), "what": __doc__.split("Usage:")[0].strip(), "runs": runs, "seeds": summary})
    for c in summary["targets"]:
        print(
            f"{'met' if c['met'] else 'MISSED':<6} {'beyond range' if c['exceeds_range'] else 'within range':<12} "
            f"{c['target']}: margin {c['margin']:+.3f}, range {c['range']:.3f}"
        )
    print(
        f"on the mean of {n} seeds: {summary['targets_met']} of {len(summary['targets'])} targets met, "
        f"{summary['targets_beyond_range']} by more than the seeds' range"
    )


def _saved() -> dict:
    path = os.path.join(RESULTS, "quality.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _load() -> dict:
    return _saved().get("runs", {})


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench quality")
    ap.add_argument("--record", help="a demo run directory (holding report.json)")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--repeat-of", default="")
    ap.add_argument("--seeds", type=int, default=0, help="run this many demos, each with its seeds moved by one")
    ap.add_argument("--set", action="append", default=[], help="a config override for --seeds' demos")
    args = ap.parse_args(argv)
    if args.seeds:
        return _seeds(args.seeds, args.set)
    if not args.record:
        ap.error("give --record RUN_DIR or --seeds N")
    with open(os.path.join(args.record, "report.json")) as f:
        report = json.load(f)
    entry = entry_of(report)
    runs = _load()
    if args.repeat_of:
        first = runs[args.repeat_of]
        entry["repeat_of"] = args.repeat_of
        entry["identical_to_3_decimals"] = rounded(first) == rounded(entry)
    runs[args.name] = entry
    save("quality", {**_saved(), "what": __doc__.split("Usage:")[0].strip(), "runs": runs})
    print(table(entry))
    print(
        f"targets met: {entry['targets_met']} of {len(entry['targets'])}; pipeline {entry['pipeline_seconds']} s"
        + (
            f"; identical to {args.repeat_of} to 3 decimals: {entry['identical_to_3_decimals']}"
            if args.repeat_of
            else ""
        )
    )
