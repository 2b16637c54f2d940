"""The quality table of demo runs, kept as a result: each run's facets (precision@10 / mAP of
every feature set), the targets met or missed, and the pipeline's seconds.

Usage: ./run bench quality --record RUN_DIR [--name demo] [--repeat-of NAME]
  reads RUN_DIR/report.json (a `./run demo` run directory, runner.output_dir/<pipeline_name>),
  adds it to bench/results/quality.json under NAME (a second run of the same seed: --repeat-of the
  first, and whether their tables are identical to 3 decimals is recorded), and prints the table
  as Markdown for the docs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

from bench.common import RESULTS, save


def table(run: dict) -> str:
    """A recorded run's quality table as Markdown: feature sets as rows, facets as columns."""
    from collabfeat.config import FEATURE_NAMES
    facets = run["facets"]
    lines = ["| features | " + " | ".join(f"{f} ({v['images']} images, chance {v['chance']:.3f})"
                                         for f, v in facets.items()) + " |",
             "| --- |" + " ---: |" * len(facets)]
    for name, label in FEATURE_NAMES.items():
        if any(name in v["table"] for v in facets.values()):
            served = " (served)" if name == run["served"] else ""
            lines.append(f"| {label}{served} | " + " | ".join(
                f"{v['table'][name]['precision@10']:.3f} / {v['table'][name]['mAP']:.3f}" if name in v["table"] else "-"
                for v in facets.values()) + " |")
    return "\n".join(lines)


def rounded(run: dict) -> dict:
    """The table as the docs print it: every metric of every cell to 3 decimals."""
    return {f: {n: {k: round(x, 3) for k, x in m.items()} for n, m in v["table"].items()} for f, v in run["facets"].items()}


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench quality")
    ap.add_argument("--record", required=True, help="a demo run directory (holding report.json)")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--repeat-of", default="")
    args = ap.parse_args(argv)
    from collabfeat.trainer.evaluate import in_order
    with open(os.path.join(args.record, "report.json")) as f:
        report = json.load(f)
    e = report["evaluation"]
    entry = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
             "pipeline_seconds": report["seconds"], "served": e["served"], "metric": e["metric"],
             "facets": {f: {k: v[k] for k in ("images", "queries", "chance", "table") if k in v}
                        for f, v in in_order(e["facets"]).items()},
             "targets": [{k: c[k] for k in ("target", "met", "needed", "values")} for c in e["targets"]],
             "targets_met": sum(c["met"] for c in e["targets"]), "datasheet": report.get("datasheet", {}).get("source")}
    path = os.path.join(RESULTS, "quality.json")
    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)["runs"]
    if args.repeat_of:
        first = runs[args.repeat_of]
        entry["repeat_of"] = args.repeat_of
        entry["identical_to_3_decimals"] = rounded(first) == rounded(entry)
    runs[args.name] = entry
    save("quality", {"what": __doc__.split("Usage:")[0].strip(), "runs": runs})
    print(table(entry))
    print(f"targets met: {entry['targets_met']} of {len(entry['targets'])}; pipeline {entry['pipeline_seconds']} s"
          + (f"; identical to {args.repeat_of} to 3 decimals: {entry['identical_to_3_decimals']}" if args.repeat_of else ""))
