"""How the pipeline's cost grows with the data: the full pipeline at several multiples of the default
data (users and log rows scaled; items too, up to Fashion-MNIST's 60,000 training images), and the
behaviour path alone (LogsExampleGen -> LogTransform -> Transform -> MFTrainer, `--until mf`) at a
larger multiple. Each size runs through the same supervisor as `collabfeat demo`
(pipeline/supervise.py): per component, wall seconds (from MLMD) and the peak resident memory of
the whole process tree while it ran (Beam's workers included).

    ./run bench scale [--sizes 1,4,16] [--behaviour 64] [--portable 4] [--work DIR]
    ./run bench scale --sizes '' --behaviour 16 --behance 0.1,1
    ./run bench scale --sizes '' --behaviour '' --behance 1 --add    (adds to the saved runs)

--behance runs the behaviour path without the image catalogue (runner.catalogue false) on the Behance-size
simulated set (BEHANCE: 309,000 users, 423,000 items, about 10^8 log rows), or on a fraction of its users
(items stay 423,000), and saves to bench/results/scale_behance.json; the data's generation (its seconds and
the generating process's peak memory) is measured too.

--portable runs the behaviour path at those multiples twice, one run after the other: on the
DirectRunner (multi-processing) and on the portable engine (pipeline/engine.py: a Beam job service
and SDK worker processes), and reports each Beam stage's rows/s on both and their ratio.

For each component, n is the size of its own input: log rows for the components that read the logs,
pairs for Transform and MFTrainer, catalogue images for the image components. The growth exponent b
(cost ∝ n^b) is taken between the two largest sizes at which the component ran. Results are saved to
bench/results/scale.json after every size, so that a partial run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys

from bench.common import RESULTS, save, stamp, table
from collabfeat import config as config_lib

BASE = config_lib.SimulatorConfig()
MAX_ITEMS = 60000
TARGETS = {
    "exponent": 1.15,
    "peak_rss_mb": 4096,
    "pipeline_seconds_at_16x": 3600,
    "behance_seconds": 7200,
    "behance_peak_rss_mb": 8192,
}
# The paper's Behance set: 309K users x 423K items, about 40M appreciations and 200M views. Here about
# 10^8 log rows: 282 views a user on average, with the appreciations and comments they bring.
BEHANCE = {"n_users": 309_000, "n_items": 423_000, "mean_views_per_user": 282}
LOG_READERS = ("LogsExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "LogTransform")
PAIR_READERS = ("Transform", "MFTrainer")


def settings(multiple: int) -> list[str]:
    return [
        f"simulator.n_users={BASE.n_users * multiple}",
        f"simulator.n_items={min(BASE.n_items * multiple, MAX_ITEMS)}",
    ]


def behance(fraction: float) -> list[str]:
    """The Behance-size set, or a fraction of its users, for the behaviour path alone."""
    return [
        f"simulator.n_users={int(BEHANCE['n_users'] * fraction)}",
        f"simulator.n_items={BEHANCE['n_items']}",
        "simulator.augment=true",
        f"simulator.mean_views_per_user={BEHANCE['mean_views_per_user']}",
        "runner.catalogue=false",
    ]


def generate(cfg_overrides: list[str]) -> dict:
    """The data made in a process of its own: its seconds and that process's peak memory."""
    code = (
        "import resource, sys, time; from collabfeat import config; from pipeline.data import prepare_data; "
        "t = time.time(); prepare_data(config.load(overrides=sys.argv[1:])); "
        "print(round(time.time() - t, 1), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cfg_overrides], check=True, capture_output=True, text=True)
    seconds, peak = out.stdout.split()[-2:]
    return {"seconds": float(seconds), "peak_rss_mb": int(peak)}


def input_size(component: str, report: dict) -> int:
    if component in LOG_READERS:
        return report["datasheet"]["rows"]
    if component in PAIR_READERS:
        return sum(report["logs"]["pairs"].values()) if "logs" in report else 0
    return report["datasheet"]["images"]["catalogue"]


def measure(size: str, overrides: list[str], until: str, work_root: str, engine: str = "direct") -> dict:
    from pipeline.data import prepare_data  # lazy: this benchmark's stack, imported when it runs
    from pipeline.supervise import (
        PipelineFailed,
        PipelineStopped,
        run,
    )  # lazy: this benchmark's stack, imported when it runs

    work = os.path.join(work_root, f"{until}-{size}")
    shutil.rmtree(os.path.join(work, "collabfeat"), ignore_errors=True)  # the run, not the data
    overrides = overrides + [f"runner.output_dir={work}", f"serving.push_dir={work}/models", f"runner.engine={engine}"]
    generated = generate(overrides)  # generated data is not the pipeline's cost
    cfg = prepare_data(config_lib.load(overrides=overrides))  # made: only finds it
    print(f"[scale] {size} until {until}: data ready ({generated['seconds']:.0f} s); running", flush=True)
    failed = None
    try:
        report = run(
            cfg,
            until,
            os.path.join(work, "pipeline.log"),
            echo=lambda line: print(line, flush=True),
            bars=sys.stdout.isatty(),
        )
    except PipelineStopped:
        raise  # the user stopped the benchmark: no further sizes
    except PipelineFailed as e:
        report, failed = e.report, str(e)
    rows = []
    for name, c in report.get("components", {}).items():
        n = input_size(name, report)
        rows.append(
            {
                "size": size,
                "path": ("full" if until == "push" else "behaviour") + ("" if engine == "direct" else f" ({engine})"),
                "component": name,
                "state": c["state"],
                "n": n,
                "seconds": c["seconds"],
                "n/s": n / c["seconds"] if c["seconds"] > 0 else None,
                "peak_rss_mb": c["peak_rss_mb"],
            }
        )
    return {
        "size": size,
        "until": until,
        "engine": engine,
        "rows_in_logs": report.get("datasheet", {}).get("rows"),
        "users": cfg.simulator.n_users,
        "items": report.get("datasheet", {}).get("items"),
        "generation": generated,
        "pipeline_seconds": report.get("seconds"),
        "peak_rss_mb": report.get("peak_rss_mb"),
        "failed": failed,
        "components": rows,
    }


def exponents(runs: list[dict], whole_span: bool = False) -> list[dict]:
    """b for time and for memory per component, between the two largest sizes it ran at
    (whole_span: between the smallest and the largest, e.g. x16 to Behance size)."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        for c in r["components"]:
            # Components too short to time or to sample (under a second) have no meaningful growth.
            if c["state"] == "complete" and c["seconds"] >= 1 and c["peak_rss_mb"]:
                by.setdefault(c["component"], []).append(c)
    out = []
    for name, cs in by.items():
        cs = sorted({c["n"]: c for c in cs}.values(), key=lambda c: c["n"])
        if len(cs) < 2 or cs[-1]["n"] <= cs[-2]["n"]:
            continue
        a, b = cs[0 if whole_span else -2], cs[-1]
        growth = math.log(b["n"] / a["n"])
        bt = math.log(max(b["seconds"], 0.1) / max(a["seconds"], 0.1)) / growth
        bm = math.log(max(b["peak_rss_mb"], 1) / max(a["peak_rss_mb"], 1)) / growth
        out.append(
            {
                "component": name,
                "from": f"{a['size']} (n={a['n']})",
                "to": f"{b['size']} (n={b['n']})",
                "b (time)": bt,
                "b (memory)": bm,
                "peak_rss_mb": b["peak_rss_mb"],
                "meets b<=1.15": bt <= TARGETS["exponent"],
                "meets rss<=4GB": b["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
            }
        )
    return out


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench scale")
    p.add_argument("--sizes", default="1,4,16", help="multiples of the default data for the full pipeline")
    p.add_argument("--behaviour", default="64", help="multiples for the behaviour path alone ('' for none)")
    p.add_argument(
        "--portable",
        default="",
        help="multiples for the behaviour path on the DirectRunner and "
        "on the portable engine, side by side ('' for none)",
    )
    p.add_argument("--behance", default="", help="fractions of the Behance-size set's users for the behaviour path")
    p.add_argument("--work", default=os.path.join("runs", "bench-scale"))
    p.add_argument(
        "--add",
        action="store_true",
        help="keep the saved file's runs of other sizes (each run keeps its own date) and add these",
    )
    args = p.parse_args(argv)
    plan = (
        [(f"x{m}", settings(int(m)), "push", "direct") for m in args.sizes.split(",") if m]
        + [(f"x{m}", settings(int(m)), "mf", "direct") for m in args.behaviour.split(",") if m]
        + [
            (f"x{m}", settings(int(m)), "mf", engine)
            for m in args.portable.split(",")
            if m
            for engine in ("direct", "portable")
        ]
        + [
            (f"behance{'' if float(f) == 1 else f'-{f}'}", behance(float(f)), "mf", "direct")
            for f in args.behance.split(",")
            if f
        ]
    )
    name = "scale_behance" if args.behance else "scale"
    result = {
        **stamp(),
        "targets": TARGETS,
        "runs": kept(name, {(size, until, engine) for size, _, until, engine in plan}) if args.add else [],
    }
    for size, overrides, until, engine in plan:
        result["runs"].append({**measure(size, overrides, until, os.path.abspath(args.work), engine), **stamp()})
        save(name, result)
        direct = [r for r in result["runs"] if r.get("engine", "direct") == "direct"]
        result["exponents"] = exponents([r for r in direct if r["until"] == "push"])
        result["exponents_all_sizes"] = exponents(direct)
        result["exponents_whole_span"] = exponents(direct, whole_span=True)
        result["engines"] = engine_ratios(result["runs"])
        save(name, result)
    print(report_text(result))
    print("saved", save(name, result))
    return result


def kept(name: str, replaced: set) -> list[dict]:
    """The saved runs of bench/results/<name>.json but those `replaced` names by (size, until, engine);
    a run saved without a date of its own takes the file's."""
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    return [
        {"date": saved.get("date"), "machine": saved.get("machine"), **r}
        for r in saved.get("runs", [])
        if (size_of(r), r["until"], r.get("engine", "direct")) not in replaced
    ]


def size_of(run: dict) -> str:
    """A run's size label (results saved before labels were kept have the multiple only)."""
    return run.get("size") or f"x{run['multiple']}"


def engine_ratios(runs: list[dict]) -> list[dict]:
    """Per component and size: rows/s on the portable engine against the DirectRunner's, from the
    behaviour runs that have both."""
    by: dict = {}
    for r in runs:
        if r["until"] == "mf":
            for c in r["components"]:
                if c["state"] == "complete" and c["n/s"]:
                    by.setdefault((size_of(r), c["component"]), {})[r.get("engine", "direct")] = c
    return [
        {
            "size": m,
            "component": name,
            "n": e["direct"]["n"],
            "n/s direct": e["direct"]["n/s"],
            "n/s portable": e["portable"]["n/s"],
            "portable / direct": e["portable"]["n/s"] / e["direct"]["n/s"],
            "peak_rss_mb direct": e["direct"]["peak_rss_mb"],
            "peak_rss_mb portable": e["portable"]["peak_rss_mb"],
        }
        for (m, name), e in sorted(by.items())
        if {"direct", "portable"} <= set(e)
    ]


def report_text(result: dict) -> str:
    rows = [c for r in result["runs"] for c in r["components"]]
    lines = [
        f"scale benchmark, {result['date']}, {result['machine']}",
        table(rows, ["size", "path", "component", "state", "n", "seconds", "n/s", "peak_rss_mb"]),
        "",
    ]
    for r in result["runs"]:
        lines.append(
            f"{size_of(r)} ({r['until']}, {r.get('engine', 'direct')}): {r['rows_in_logs']} log rows, "
            f"{r['pipeline_seconds']} s, "
            f"peak {r['peak_rss_mb']} MB" + (f", FAILED: {r['failed']}" if r["failed"] else "")
        )
    columns = ["component", "from", "to", "b (time)", "b (memory)", "peak_rss_mb", "meets b<=1.15", "meets rss<=4GB"]
    lines += [
        "",
        "growth between the two largest full-pipeline sizes:",
        table(result.get("exponents", []), columns),
        "",
        "growth between the two largest sizes of all runs (the behaviour path's largest included):",
        table(result.get("exponents_all_sizes", []), columns),
    ]
    if result.get("engines"):
        lines += [
            "",
            "the behaviour path on the portable engine against the DirectRunner, same size:",
            table(result["engines"], list(result["engines"][0])),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    run()
