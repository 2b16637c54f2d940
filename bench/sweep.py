"""Where collaborative features win, and where they do not: a sweep of the simulator's taste
weights (simulator.style_weight x simulator.category_weight) on the default catalogue.

Each cell simulates the behaviour with its weights, factorises it (weighted ALS, as MFTrainer),
trains the served CNN onto the item factors (regression, as CNNTrainer) and scores the held-out
images on the style, unseen-style and category facets (precision@10, as the Evaluator). Random-
init and raw pixels do not depend on the behaviour and are scored once. The pipeline's Beam stages
are left out (the pairs are weighted as the Beam transform weighs them, without its popularity
filter: bench/common.default_interactions), so a cell takes minutes, not the demo's time. The
default weights (1.0, 0.5) were set before any evaluation; this table is not used to tune them.

Usage: ./run bench sweep [--style 0.25,1,2] [--category 0,0.5,1] [--epochs 12]
  -> bench/results/sweep.json and its table on the console
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from bench.common import save, step, table


def markdown(result: dict) -> str:
    """The sweep as the docs' table: collaborative precision@10 per facet and whether it wins, per cell."""
    base = result["baselines"]
    lines = [
        "| style weight | category weight | style | unseen style | category |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["cells"]:
        lines.append(
            f"| {c['style_weight']:g} | {c['category_weight']:g} | "
            + " | ".join(
                f"{c[f'collaborative {f}']:.3f} {'win' if c[f'{f} wins'] else 'no'}"
                for f in ("style", "unseen_style", "category")
            )
            + " |"
        )
    lines.append(
        "| random-init | | "
        + " | ".join(f"{base['random'][f]:.3f}" for f in ("style", "unseen_style", "category"))
        + " |"
    )
    lines.append(
        "| raw pixels | | "
        + " | ".join(f"{base['pixels'][f]:.3f}" for f in ("style", "unseen_style", "category"))
        + " |"
    )
    return "\n".join(lines)


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench sweep")
    ap.add_argument("--style", default="0.25,1,2")
    ap.add_argument("--category", default="0,0.5,1")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--markdown", action="store_true", help="only print bench/results/sweep.json as the docs' table")
    args = ap.parse_args(argv)
    if args.markdown:
        from bench.common import RESULTS  # lazy: this benchmark's stack, imported when it runs

        with open(os.path.join(RESULTS, "sweep.json")) as f:
            print(markdown(json.load(f)))
        return
    from bench.common import default_interactions  # lazy: this benchmark's stack, imported when it runs
    from bench.gate import chances, read, scores  # lazy: this benchmark's stack, imported when it runs
    from collabfeat import config as config_lib  # lazy: this benchmark's stack, imported when it runs
    from pipeline.data import prepare_data  # lazy: this benchmark's stack, imported when it runs
    from trainer import cnn, mf  # lazy: this benchmark's stack, imported when it runs

    k, cells, fixed = 10, [], {}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="collabfeat-sweep-") as out:
        for style in [float(v) for v in args.style.split(",")]:
            for category in [float(v) for v in args.category.split(",")]:
                step(f"style_weight {style}, category_weight {category}")
                cfg = config_lib.load(
                    overrides=[
                        f"simulator.style_weight={style}",
                        f"simulator.category_weight={category}",
                        "simulator.n_transfer_images=0",
                        f"runner.output_dir={out}",
                        f"cnn.epochs={args.epochs}",
                    ]
                )
                d = prepare_data(cfg).data
                folder = os.path.dirname(d.items)
                size, bg = cfg.cnn.image_size, cfg.data.background
                # the pairs as the Beam transform weighs them, indexed by sorted user and item ids
                users, items, weights, n_users, n_items, ids = default_interactions(cfg, item_ids=True)
                factors = mf.train(users, items, weights / weights.max(), n_users, n_items, cfg.mf)
                x, _, _, kept = read(folder, "items.csv", size, bg)
                row = {i: r for r, i in enumerate(ids)}
                have = [j for j, i in enumerate(kept) if i in row]
                targets = factors.items[[row[kept[j]] for j in have]]
                net, _ = cnn.train_regression(cnn.pairs(x[have], targets), cfg.cnn)
                if not fixed:  # the held-out images and the baselines do not depend on the behaviour
                    held = read(folder, "eval_items.csv", size, bg)[:3]
                    unseen = read(folder, "unseen_items.csv", size, bg)[:3]
                    fixed = {
                        "held": held,
                        "unseen": unseen,
                        "chance": chances(held, unseen),
                        "rows": {
                            name: scores(model, held, unseen, k)
                            for name, model in (("random", cnn.random_init(cfg.cnn)), ("pixels", cnn.pixels_net(size)))
                        },
                    }
                mine = scores(net, fixed["held"], fixed["unseen"], k)
                cell = {
                    "style_weight": style,
                    "category_weight": category,
                    "pairs": int(len(users)),
                    **{f"collaborative {f}": v for f, v in mine.items()},
                }
                for facet, margin in (("style", 0.10), ("unseen_style", 0.0), ("category", 0.05)):
                    cell[f"{facet} wins"] = all(
                        mine[facet] >= fixed["rows"][b][facet] + margin for b in ("random", "pixels")
                    )
                cells.append(cell)
                print(table([cell], list(cell)), flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "what": __doc__.split("Usage:")[0].strip(),
        "metric": f"precision@{k}",
        "cnn_epochs": args.epochs,
        "chance": fixed["chance"],
        "baselines": fixed["rows"],
        "wins": "style: collaborative >= random-init and pixels + 0.10; unseen_style: >= both; "
        "category: >= both + 0.05",
        "cells": cells,
        "seconds": round(time.time() - start),
    }
    path = save("sweep", result)
    print(table(cells, list(cells[0])))
    print(f"baselines: {fixed['rows']}; chance: {fixed['chance']}; {path}")
