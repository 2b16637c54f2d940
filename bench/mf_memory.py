"""MFTrainer's memory and time against mf.bucket_pairs, on the Transform output of a finished run.

The MFTrainer component (pipeline/components.py) runs in a fresh interpreter per setting, on the
newest Transform artifacts under the run's pipeline root, with the run's mf settings but for
bucket_pairs; the catalogue is left out (no style agreement). Reported: seconds, peak RSS, the
buckets per side, and the train pairs and recall@k, which must not change with the buckets.
Usage: ./run bench mf-memory --run OUTPUT_DIR [--bucket-pairs 16777216,4194304,1048576]
(OUTPUT_DIR: a run's runner.output_dir, for example a `bench scale` size's directory.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

from bench.common import save, stamp, step, table
from collabfeat.config import MFConfig
from pipeline.report import find_artifact, read_report

WHAT = (
    "MFTrainer (weighted ALS) on a finished run's Transform output at each mf.bucket_pairs: its seconds, "
    "peak memory, the row buckets per side (sorted one at a time, memory-mapped at every sweep), and recall@k, "
    "which must not change with the buckets."
)


def newest(root: str, output: str) -> str:
    uri = find_artifact(root, "Transform", output)
    if not uri:
        raise SystemExit(
            f"bench mf-memory: no Transform {output} under {root}: run the pipeline through Transform first"
        )
    return uri


def one(run_dir: str, bucket_pairs: int, out: str) -> dict:
    """In this process: MFTrainer's function with mf.bucket_pairs = bucket_pairs."""
    from tfx.types import artifact_utils, standard_artifacts  # lazy: TFX's start-up, only for this benchmark

    from pipeline import components  # lazy: this benchmark's stack, imported when it runs

    root = os.path.join(run_dir, "collabfeat", "root")
    with open(os.path.join(run_dir, "collabfeat", "config.json")) as f:
        known = {field.name for field in dataclasses.fields(MFConfig)}  # a run by an older version may have more
        settings = {"mf": {k: v for k, v in json.load(f)["mf"].items() if k in known}}
    settings["mf"]["bucket_pairs"] = bucket_pairs
    transformed = standard_artifacts.Examples()
    transformed.uri = newest(root, "transformed_examples")
    transformed.split_names = artifact_utils.encode_split_names(["train", "eval"])
    graph = standard_artifacts.TransformGraph()
    graph.uri = newest(root, "transform_graph")
    model = standard_artifacts.Model()
    model.uri = out
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    components.MFTrainer.EXECUTOR_SPEC.executor_class._FUNCTION(
        transformed=transformed, transform_graph=graph, model=model, settings_json=json.dumps(settings), code="bench"
    )
    seconds = time.perf_counter() - start
    report = read_report(out)
    k = settings["mf"]["recall_k"]
    return {
        "bucket_pairs": bucket_pairs,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "train_pairs": report["train_pairs"],
        "buckets": report.get("als_buckets"),
        f"recall@{k}": report[f"recall@{k}"],
    }


def run(argv) -> None:
    parser = argparse.ArgumentParser(prog="bench mf-memory")
    parser.add_argument("--run", required=True, help="a finished run's output directory")
    parser.add_argument("--bucket-pairs", default="16777216,4194304,1048576")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.run, args.one, args.out)), flush=True)
        return
    rows = []
    for bucket_pairs in (int(b) for b in args.bucket_pairs.split(",")):
        step(f"MFTrainer with mf.bucket_pairs={bucket_pairs}")
        out = os.path.join(args.run, "bench-mf-memory", str(bucket_pairs))
        done = subprocess.run(
            [sys.executable, "-m", "bench", "mf-memory", "--run", args.run, "--one", str(bucket_pairs), "--out", out],
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(
                f"bench mf-memory: bucket_pairs={bucket_pairs} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
    print(table(rows, list(rows[0])))
    print("results:", save("mf_memory", {**stamp(), "what": WHAT, "run": args.run, "rows": rows}))
