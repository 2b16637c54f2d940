"""Which collaborative recipe and which retrieval layer: training from scratch against fine-tuning
EfficientNet-Lite0 from its ImageNet weights (the old recipe: Adam on every layer from the start;
the published one: the new head settles on the frozen network, then AdamW on every layer, the head
at a higher rate; and that with distillation of the frozen network's pooled features), each scored
through its projection (the embedding layer) and through the backbone's pooled features.

The default behaviour is factorised once (weighted ALS, as MFTrainer; the pairs as
bench/common.default_interactions weighs them) and every recipe regresses onto the same factors.
Scores are precision@10 on the held-out images' style and category and on the unseen style, as
the Evaluator computes them (bench/gate.scores); "mean" is their mean, the quantity that picks
the served model (eval.serve).

Usage: ./run bench finetune [--recipes scratch,adam,adamw,distill] [--distill 1.0] [--set finetune.epochs=5 ...]
  -> bench/results/finetune.json, one trial per choice of recipes and settings (a rerun replaces it),
     and its table on the console
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time

import numpy as np

from bench.common import save_trial, step, table

RECIPES = ("scratch", "adam", "adamw", "distill")


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench finetune")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--distill", type=float, default=1.0, help="the distill recipe's weight")
    ap.add_argument("--set", action="append", default=[], help="a config override, as for ./run run")
    args = ap.parse_args(argv)
    from bench.common import default_interactions  # lazy: this benchmark's stack, imported when it runs
    from bench.gate import chances, read, scores  # lazy: this benchmark's stack, imported when it runs
    from collabfeat import config as config_lib  # lazy: this benchmark's stack, imported when it runs
    from collabfeat import imagenet  # lazy: this benchmark's stack, imported when it runs
    from pipeline.data import prepare_data  # lazy: this benchmark's stack, imported when it runs
    from trainer import cnn, mf  # lazy: this benchmark's stack, imported when it runs

    start, rows = time.time(), []
    with tempfile.TemporaryDirectory(prefix="collabfeat-finetune-") as out:
        cfg = config_lib.load(overrides=["simulator.n_transfer_images=0", f"runner.output_dir={out}", *args.set])
        d = prepare_data(cfg).data
        folder = os.path.dirname(d.items)
        size, bg, tune = cfg.cnn.image_size, cfg.data.background, cfg.finetune
        step("factorising the default behaviour")
        users, items, weights, n_users, n_items, ids = default_interactions(cfg, item_ids=True)
        factors = mf.train(users, items, weights / weights.max(), n_users, n_items, cfg.mf)
        x, _, _, kept = read(folder, "items.csv", size, bg)
        row = {i: r for r, i in enumerate(ids)}
        have = [j for j, i in enumerate(kept) if i in row]
        pairs = cnn.pairs(x[have], factors.items[[row[kept[j]] for j in have]])
        held = read(folder, "eval_items.csv", size, bg)[:3]
        unseen = read(folder, "unseen_items.csv", size, bg)[:3]

    def score(name, net, seconds):
        for layer, model in (("projection", net), ("pooled", cnn.pooled(net))):
            s = scores(model, held, unseen)
            rows.append(
                {
                    "recipe": name,
                    "features": layer,
                    **s,
                    "mean": float(np.mean(list(s.values()))),
                    "seconds": round(seconds),
                }
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)

    def timed_train(name, fn):
        step(f"recipe {name}")
        t = time.time()
        net = fn()
        score(name, net, time.time() - t)

    for name in args.recipes.split(","):
        if name == "scratch":
            timed_train(name, lambda: cnn.train_regression(pairs, cfg.cnn)[0])
        elif name == "adam":  # the recipe before: Adam at a quarter of the scratch rate on every layer
            adam = dataclasses.replace(cfg.cnn, learning_rate=cfg.cnn.learning_rate / 4)
            timed_train(
                name,
                lambda: cnn.train_regression(
                    pairs,
                    adam,
                    tune.warmup_epochs + tune.epochs,
                    net=(imagenet.regression_backbone(size, tune.size, cfg.cnn.embedding_dim)),
                )[0],
            )
        elif name in ("adamw", "distill"):
            recipe = dataclasses.replace(tune, distill=args.distill if name == "distill" else 0.0)

            def fine():
                net = imagenet.regression_backbone(size, tune.size, cfg.cnn.embedding_dim)
                teacher = imagenet.backbone(size, tune.size) if recipe.distill else None
                return cnn.finetune_regression(pairs, cfg.cnn, recipe, net, net.get_layer(imagenet.NETWORK), teacher)[0]

            timed_train(name if name == "adamw" else f"distill {args.distill:g}", fine)
        else:
            raise SystemExit(f"bench finetune: unknown recipe {name!r}: one of {RECIPES}")
    for name, net in (
        ("frozen ImageNet", imagenet.backbone(size, tune.size)),
        ("random-init", cnn.random_init(cfg.cnn)),
        ("pixels", cnn.pixels_net(size)),
    ):
        s = scores(net, held, unseen)
        rows.append({"recipe": name, "features": "-", **s, "mean": float(np.mean(list(s.values()))), "seconds": 0})
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "metric": "precision@10",
        "chance": chances(held, unseen),
        "finetune": dataclasses.asdict(tune),
        "distill": args.distill,
        "cnn_epochs": cfg.cnn.epochs,
        "overrides": args.set,
        "recipes": args.recipes,
        "rows": rows,
        "seconds": round(time.time() - start),
    }
    path = save_trial("finetune", __doc__.split("Usage:")[0].strip(), result, ["overrides", "recipes", "distill"])
    print(table(rows, list(rows[0])))
    print(f"chance: {result['chance']}; {path}")
