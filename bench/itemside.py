"""The item side's components at catalogue scale: the Indexer, the Pusher and the Evaluator on N
catalogue images, each in a process of its own whose resident memory is sampled (every 50 ms).

The catalogue is made as the Behance-size set makes it (simulator.augment, docs/data.md): the embedded
catalogue's images, then seeded augmentations of them up to N, with few users (their logs are not used).
Its records are the ones ImageImport writes (collabfeat/catalogue.py load_record, gzipped tf.Examples a
split), written here by a streamed loop over two processes instead of a Beam pipeline: ImageImport's
own run is not what is measured. The feature models are a finished run's (--source: the last demo's by
default), and --sets picks which of them the Indexer embeds the catalogue with (the served one always):
its cost grows with the catalogue once per set (about 0.4-2 ms an image a set here), so the default
is the served set, raw pixels (the path of a set reduced to index.explorer_dims: a sample, a projection)
and one more CNN (a set stored whole). The Evaluator scores every set of the source run: it reads the
held-out splits only, whatever the catalogue's size.

Steps, in order, each measured (seconds, peak RSS):
  indexer        serving/build/index.py build_index: the served index, the map, the other sets' embeddings
  push           serving/build/push.py push, nothing served yet: the SavedModel with the catalogue, the index linked
  guarded push   push again with the Evaluator's held-out images: compared with the first version (both loaded)
  evaluator      trainer/evaluate.py evaluate
Against the target: each step's peak beyond the index's own size (its ScaNN files and the served
embeddings), at most 4 GB.

    ./run bench itemside [--items 6000,1000000] [--sets regression,pixels,supervised] [--source runs/collabfeat]

Writes bench/results/itemside.json (sizes measured before and not measured again are kept).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from bench.common import RESULTS, Sampler, disk_mb, save, stamp, step, table
from collabfeat import config as config_lib

TARGETS = {"memory_beyond_index_mb": 4096}
SPLITS = {"catalogue": "items", "heldout": "eval_items", "transfer": "transfer_items", "unseen": "unseen_items"}
STEPS = ("indexer", "push", "guarded push", "evaluator")
USERS = 2000  # the catalogue's data set's users: their logs are not read here


def overrides(items: int, work: str) -> list[str]:
    return [
        f"simulator.n_items={items}",
        f"simulator.augment={'true' if items > config_lib.SimulatorConfig().n_items else 'false'}",
        f"simulator.n_users={USERS}",
        f"runner.output_dir={work}",
        f"serving.push_dir={work}/models",
    ]


def _load(args):
    from collabfeat import catalogue, examples, outcomes  # lazy: the worker's stack

    line, cols, image_dir, size, where, background = args
    row = catalogue.parse_line(line, cols, where)  # as ImageImport parses a line
    if "_error" in row:
        return row["_error"]
    outcome, value = catalogue.load_record(row, image_dir, size, where, background)
    return outcome, (examples.make(value) if outcome == outcomes.USED else value)


def _counted(loaded, counts: dict):
    """The records of the loaded rows that were used; every row's outcome counted in `counts`."""
    from collabfeat import outcomes  # lazy: this benchmark's stack

    for outcome, value in loaded:
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == outcomes.USED:
            yield value


def write_records(cfg, out: str) -> dict:
    """The data's item tables -> out/Split-<split>/ as ImageImport's records; split -> outcome counts."""
    from collabfeat import catalogue, examples  # lazy: this benchmark's stack

    counts = {}
    for split, field in SPLITS.items():
        table_path = getattr(cfg.data, field)
        if not table_path:
            continue
        os.makedirs(examples.split_dir(out, split), exist_ok=True)
        where, got = table_path, dict[str, int]()
        cols = catalogue.header(table_path)
        with open(table_path) as f, multiprocessing.Pool(2) as pool:
            next(f)  # the header
            rows = (line for line in f if line.strip())
            jobs = ((r, cols, cfg.data.image_dir, cfg.cnn.image_size, where, cfg.data.background) for r in rows)
            part = os.path.join(examples.split_dir(out, split), "data_tfrecord-00000-of-00001.gz")
            examples.write_records(part, _counted(pool.imap(_load, jobs, chunksize=256), got))
        counts[split] = got
    return counts


def source_models(source: str) -> tuple[dict[str, str], str]:
    """A finished run's feature models (set -> path) and the set it served."""
    from collabfeat import feature_model  # lazy: this benchmark's stack

    with open(os.path.join(source, "report.json")) as f:
        report = json.load(f)
    served = report["index"]["served"]
    models = {}
    for component, outputs in report["artifacts"].items():
        if component == "CNNTrainer":
            name = report["cnn"].get("kind", served)
        elif component.startswith("Features_"):
            name = component.removeprefix("Features_")
        else:
            continue
        path = feature_model.model_dir(outputs["model"][0])
        if os.path.isdir(path):
            models[name] = path
    if served not in models:
        raise ValueError(f"bench itemside: {source} served {served!r}, whose model is not among {sorted(models)}")
    return models, served


def chosen(models: dict[str, str], served: str, sets: list[str]) -> dict[str, str]:
    """The models of `sets` and the served one (ValueError naming a set the run lacks)."""
    unknown = set(sets) - set(models)
    if unknown:
        raise ValueError(f"bench itemside: --sets {sorted(unknown)} are not in the source run: {sorted(models)}")
    return {n: p for n, p in models.items() if n in sets or n == served}


def child(step_name: str, spec: dict) -> dict:
    """One step, in this process (run by measure())."""

    cfg = config_lib.load(overrides=spec["overrides"])
    images, splits = spec["images"], spec["splits"]
    if step_name == "indexer":
        from serving.build import index  # lazy: the step's own stack, in its own process

        shutil.rmtree(spec["index"], ignore_errors=True)
        report = index.build_index(images, spec["index_models"], spec["served"], spec["index"], cfg)
        keep = ("items", "dim", "build_seconds", "feature_sets", "reduced_sets")
        return {k: report[k] for k in keep} | {
            "recall": next(v for k, v in report.items() if k.startswith("recall@")),
            "settings": {k: report["settings"].get(k) for k in ("kind", "leaves", "leaves_to_search", "reorder")},
        }
    if step_name in ("push", "guarded push"):
        from serving.build import push  # lazy: the step's own stack, in its own process

        heldout = push.heldout_images(images, splits) if step_name == "guarded push" else None
        out = push.push(spec["index_models"][spec["served"]], spec["index"], cfg, heldout)
        return {k: out[k] for k in ("pushed", "version", "why") if k in out}
    if step_name == "evaluator":
        from trainer.evaluate import evaluate  # lazy: the step's own stack, in its own process

        report = evaluate(images, splits, spec["models"], cfg)
        return {"served": report["served"], "images": report["images"]}
    raise ValueError(f"bench itemside: no step {step_name!r}")


def measure(step_name: str, spec: dict, log: str) -> dict:
    """A step in a process of its own: its seconds, its peak RSS (sampled) and what it returned."""
    code = (
        "import json, sys; from bench.itemside import child; "
        "print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))))"
    )
    start = time.time()
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, step_name, json.dumps(spec)], stdout=subprocess.PIPE, stderr=err, text=True
        )
        sampler = Sampler(proc.pid)
        out, _ = proc.communicate()
        peak = sampler.close()
    if proc.returncode:
        raise RuntimeError(f"bench itemside: step {step_name!r} failed (exit {proc.returncode}): see {log}")
    got = json.loads(out.splitlines()[-1])
    return {"step": step_name, "seconds": time.time() - start, "peak rss mb": peak / 2**20, **got}


# What of the index each step holds: the Indexer builds all of it; a push memory-maps its embeddings (not
# its searcher); the Evaluator reads none of it.
HOLDS = {"indexer": "index", "push": "embeddings", "guarded push": "embeddings", "evaluator": ""}


def beyond(rows: list[dict], index_mb: float, embeddings_mb: float) -> None:
    """Each step's peak beyond the part of the index it holds (HOLDS), against the target."""
    for r in rows:
        r["index held mb"] = {"index": index_mb, "embeddings": embeddings_mb, "": 0.0}[HOLDS[r["step"]]]
        r["beyond index mb"] = r["peak rss mb"] - r["index held mb"]
        r["met"] = r["beyond index mb"] <= TARGETS["memory_beyond_index_mb"]


def at_size(items: int, models: dict, served: str, index_sets: dict, work_root: str, steps=STEPS, before=None) -> dict:
    from bench.scale import generate  # lazy: its data generation, measured the same way
    from pipeline.data import prepare_data  # lazy: this benchmark's stack

    work = os.path.abspath(os.path.join(work_root, str(items)))
    os.makedirs(work, exist_ok=True)
    over = overrides(items, work)
    step(f"{items:,} items: the data (simulator.augment beyond the embedded catalogue)")
    made = os.path.isdir(os.path.join(work, "data"))  # generated by an earlier run: reused
    generated = generate(over)
    cfg = prepare_data(config_lib.load(overrides=over))
    images = os.path.join(work, "images")
    start, recorded = time.time(), None
    if not os.path.exists(os.path.join(images, "counts.json")):
        shutil.rmtree(images, ignore_errors=True)
        step(f"{items:,} items: the records")
        counts = write_records(cfg, images)
        with open(os.path.join(images, "counts.json"), "w") as f:
            json.dump(counts, f)
        recorded = time.time() - start
    with open(os.path.join(images, "counts.json")) as f:
        counts = json.load(f)
    spec: dict[str, Any] = {
        "overrides": over,
        "images": images,
        "splits": list(counts),
        "models": models,
        "index_models": index_sets,
        "served": served,
        "index": os.path.join(work, "index"),
    }
    shutil.rmtree(os.path.join(work, "models"), ignore_errors=True)
    log = os.path.join(work, "steps.log")
    kept = {r["step"]: r for r in (before or {}).get("steps", [])}
    rows = []
    for name in STEPS:
        if name not in steps and name in kept:  # not measured again: as the earlier run measured it
            rows.append(kept[name])
            continue
        step(f"{items:,} items: {name}")
        rows.append(measure(name, spec, log))
        print(table([rows[-1]], ["step", "seconds", "peak rss mb"]), flush=True)
    embeddings_mb = disk_mb(os.path.join(spec["index"], "embeddings.npy"))
    index_mb = disk_mb(os.path.join(spec["index"], "scann")) + embeddings_mb
    beyond(rows, index_mb, embeddings_mb)
    return {
        "items": items,
        "catalogue images": counts["catalogue"].get("used", 0),
        "records": counts,
        # reused files keep the times measured when they were made
        "data s": (before or {}).get("data s") if made else generated["seconds"],
        "records s": (before or {}).get("records s") if recorded is None else recorded,
        "index mb": index_mb,
        "versions mb": disk_mb(os.path.join(work, "models"), besides=spec["index"]),
        "indexed sets": sorted(index_sets),
        "steps": rows,
    }


def run(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench itemside")
    p.add_argument("--items", default="6000,1000000", help="catalogue sizes (comma-separated)")
    p.add_argument("--sets", default="pixels,supervised", help="feature sets the Indexer embeds besides the served one")
    p.add_argument("--source", default=os.path.join("runs", "collabfeat"), help="a finished run (its report.json)")
    p.add_argument("--work", default=os.path.join("runs", "bench-itemside"))
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="steps to measure (comma-separated; the others are kept from the saved result at that size; "
        "a guarded push needs the push before it)",
    )
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := [s for s in steps if s not in STEPS]:
        raise SystemExit(f"bench itemside: no step(s) {unknown} (steps: {', '.join(STEPS)})")
    models, served = source_models(args.source)
    index_sets = chosen(models, served, [s for s in args.sets.split(",") if s])
    path = os.path.join(RESULTS, "itemside.json")
    sizes = []
    if os.path.exists(path):
        with open(path) as f:
            sizes = json.load(f).get("sizes", [])
    for items in (int(s) for s in args.items.split(",") if s):
        before = next((s for s in sizes if s["items"] == items), {})
        if before and before["indexed sets"] != sorted(index_sets):
            before = {k: v for k, v in before.items() if k != "steps"}  # other sets: its steps are not these
        got = {**stamp(), **at_size(items, models, served, index_sets, args.work, steps, before)}
        sizes = sorted([s for s in sizes if s["items"] != items] + [got], key=lambda s: s["items"])
        result = {
            "targets": TARGETS,
            "source": os.path.relpath(args.source),
            "source sets": sorted(models),
            "sizes": sizes,
        }
        save("itemside", result)
    rows = [
        {"items": s["items"], **{k: r[k] for k in ("step", "seconds", "peak rss mb", "beyond index mb", "met")}}
        for s in sizes
        for r in s["steps"]
    ]
    print(table(rows, list(rows[0])))
    print("saved", os.path.join(RESULTS, "itemside.json"))
    return result
