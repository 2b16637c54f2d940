"""What repeatable training costs: the CNN trained with and without TensorFlow's op determinism
(cnn.deterministic), alternating in one process, on the same images and targets.

Usage: ./run bench determinism [--repeats 3] [--images 2048] [--epochs 2]
  -> bench/results/determinism.json: median seconds of each, their ratio, and whether two
     deterministic trainings gave the same features (they must) and two others did.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import numpy as np

from bench.common import save, step


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench determinism")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    from collabfeat.config import CNNConfig  # lazy: this benchmark's stack, imported when it runs
    from trainer import cnn  # lazy: this benchmark's stack, imported when it runs

    rng = np.random.default_rng(0)
    base = CNNConfig()
    x = rng.integers(0, 256, (args.images, base.image_size, base.image_size, 3), dtype=np.uint8)
    y = rng.normal(size=(args.images, 32)).astype(np.float32)
    probe = x[:256]
    times = {True: [], False: []}
    features = {True: [], False: []}
    for r in range(args.repeats):
        for deterministic in (True, False):
            cfg = dataclasses.replace(base, epochs=args.epochs, deterministic=deterministic)
            step(f"repeat {r + 1}: deterministic={deterministic}")
            start = time.perf_counter()
            net, _ = cnn.train_regression(cnn.pairs(x, y), cfg)
            times[deterministic].append(time.perf_counter() - start)
            features[deterministic].append(cnn.embed(net, probe))
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "images": args.images,
        "epochs": args.epochs,
        "image_size": base.image_size,
        "repeats": args.repeats,
        "seconds": {"deterministic": times[True], "default": times[False]},
        "median_seconds": {"deterministic": median[True], "default": median[False]},
        "cost_ratio": median[True] / median[False],
        "deterministic_runs_identical": all(np.array_equal(features[True][0], f) for f in features[True]),
        "default_runs_identical": all(np.array_equal(features[False][0], f) for f in features[False]),
    }
    path = save("determinism", result)
    print(
        f"CNN training, median of {args.repeats}: deterministic {median[True]:.1f} s, default {median[False]:.1f} s "
        f"(x{result['cost_ratio']:.2f}); identical features: deterministic "
        f"{result['deterministic_runs_identical']}, default {result['default_runs_identical']}; {path}"
    )
