"""The data gate: is a source's style real, and not solved by pixels? (issue: learning quality)

Before a catalogue source becomes the default, a short measurement without behaviour or
pipeline: on the held-out images' style facet (precision@10, every image queries the rest),
  - a style-supervised CNN (EfficientNet-Lite0 from its ImageNet weights, fine-tuned on the
    catalogue's style labels) must reach at least CEILING: the style is learnable from the pixels;
  - raw pixels and a random-init CNN must stay at most halfway between chance and what the
    style-supervised CNN reached: the style is not trivially in the pixels.
The project's small CNN trained from scratch on the style labels, frozen ImageNet features and the
unseen style (one vendor in no training) are measured too, for information.

Usage: ./run bench gate [--source emoji] [--vendors google,twitter,fluent --unseen openmoji] [--epochs 8]
  -> bench/results/gate_<source>.json, one trial per vendor choice (a new run of the same choice replaces it)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time

import numpy as np

from bench.common import save_trial, step

CEILING = 0.9


def read(out: str, table: str, size: int, background):
    """An item table's images through the one preprocessing: (uint8 images, styles, labels, item
    ids), without the images that cannot be read (the simulator plants a few)."""
    from collabfeat import images  # lazy: this benchmark's stack, imported when it runs

    with open(os.path.join(out, table)) as f:
        rows = [r for r in csv.DictReader(f)]
    px, styles, labels, ids = [], [], [], []
    for r in rows:
        try:
            data = images.read_bytes(r["image"], os.path.join(out, "images"))
            px.append(images.decode(data, size, background))
        except images.ImageError:  # the simulator's planted bad images
            continue
        styles.append(int(r["style"]))
        labels.append(int(r["label"]))
        ids.append(r["item_id"])
    return np.stack(px), np.array(styles), np.array(labels), ids


def unseen_queries(held_styles: np.ndarray, unseen_styles: np.ndarray) -> np.ndarray:
    """Which rows of the pool [held-out; unseen] query on the unseen style: the unseen ones."""
    return np.r_[np.zeros(len(held_styles), bool), np.ones(len(unseen_styles), bool)]


def chances(held, unseen=None) -> dict[str, float]:
    """Each facet's chance line, as the Evaluator draws it. held, unseen: (images, styles, labels)."""
    from trainer.evaluate import chance  # lazy: this benchmark's stack, imported when it runs

    out = {"style": chance(held[1]), "category": chance(held[2])}
    if unseen is not None:
        out["unseen_style"] = chance(np.r_[held[1], unseen[1]], unseen_queries(held[1], unseen[1]))
    return out


def scores(model, held, unseen=None, k: int = 10) -> dict[str, float]:
    """precision@k of a net on the held-out images' style and category and, with the unseen
    vendor's images, on the unseen style: they query the pool of them and the held-out ones."""
    from trainer import cnn  # lazy: this benchmark's stack, imported when it runs
    from trainer.evaluate import retrieval_metrics  # lazy: this benchmark's stack, imported when it runs

    key = f"precision@{k}"
    feats = cnn.embed(model, held[0])
    out = {"style": retrieval_metrics(feats, held[1], k)[key], "category": retrieval_metrics(feats, held[2], k)[key]}
    if unseen is not None:
        pool = np.concatenate([feats, cnn.embed(model, unseen[0])])
        out["unseen_style"] = retrieval_metrics(
            pool, np.r_[held[1], unseen[1]], k, candidates=unseen_queries(held[1], unseen[1])
        )[key]
    return out


def run(argv) -> None:
    ap = argparse.ArgumentParser(prog="bench gate")
    ap.add_argument("--source", default="emoji")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--vendors", default="", help="emoji: the catalogue's vendors (default: simulator.vendors)")
    ap.add_argument("--unseen", default=None, help="emoji: the unseen vendor (default: simulator.unseen_vendor)")
    args = ap.parse_args(argv)
    from collabfeat import config as config_lib  # lazy: this benchmark's stack, imported when it runs
    from collabfeat import imagenet  # lazy: this benchmark's stack, imported when it runs
    from collabfeat.simulate import simulate  # lazy: this benchmark's stack, imported when it runs
    from trainer import cnn  # lazy: this benchmark's stack, imported when it runs

    overrides = [f"data.source={args.source}", "simulator.n_transfer_images=0", "simulator.n_users=200"]
    if args.vendors:
        overrides.append(f"simulator.vendors={args.vendors}")
    if args.unseen is not None:
        overrides.append(f"simulator.unseen_vendor={args.unseen}")
    cfg = config_lib.load(overrides=overrides)
    size, k = cfg.cnn.image_size, 10
    with tempfile.TemporaryDirectory(prefix="collabfeat-gate-") as out:
        step(f"simulating the {args.source} catalogue (images only matter here)")
        simulate(cfg.simulator, out, args.source)
        train_x, train_s, _, _ = read(out, "items.csv", size, cfg.data.background)
        held = read(out, "eval_items.csv", size, cfg.data.background)[:3]
        unseen = (
            read(out, "unseen_items.csv", size, cfg.data.background)[:3]
            if os.path.exists(os.path.join(out, "unseen_items.csv"))
            else None
        )
    start = time.time()
    classes = int(train_s.max()) + 1
    step(
        f"training the style-supervised CNNs: {len(train_x)} images, {args.epochs} epochs, "
        "from ImageNet and from scratch"
    )
    tuned, losses = cnn.train_classifier(
        cnn.pairs(train_x, train_s),
        classes,
        cfg.cnn,
        args.epochs,
        task="gate: style-supervised from ImageNet",
        net=imagenet.regression_backbone(size, size, cfg.cnn.embedding_dim),
    )
    scratch, _ = cnn.train_classifier(
        cnn.pairs(train_x, train_s), classes, cfg.cnn, args.epochs, task="gate: style-supervised from scratch"
    )
    nets = {
        "style_supervised": tuned,
        "style_supervised_scratch": scratch,
        "random": cnn.random_init(cfg.cnn),
        "pixels": cnn.pixels_net(size),
        "imagenet": imagenet.backbone(size, cfg.eval.imagenet_size),
    }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "source": args.source,
        "image_size": size,
        "epochs": args.epochs,
        "losses": losses,
        **(
            {"vendors": cfg.simulator.vendors, "unseen_vendor": cfg.simulator.unseen_vendor}
            if args.source == "emoji"
            else {}
        ),
        "catalogue_images": len(train_x),
        "held_out_images": len(held[0]),
        "metric": f"precision@{k}",
    }
    line = chances(held, unseen)
    for facet in ("style", "unseen_style"):
        result[facet] = {"chance": line[facet]} if facet in line else {}
    for name, model in nets.items():
        for facet, value in scores(model, held, unseen, k).items():
            if facet in result:
                result[facet][name] = value
    s = result["style"]
    halfway = (s["chance"] + s["style_supervised"]) / 2
    result["gate"] = {
        "ceiling_needed": CEILING,
        "ceiling_met": s["style_supervised"] >= CEILING,
        "halfway": halfway,
        "pixels_below_halfway": s["pixels"] <= halfway,
        "random_below_halfway": s["random"] <= halfway,
    }
    result["gate"]["passed"] = all(v for key, v in result["gate"].items() if key.endswith(("_met", "_halfway")))
    result["seconds"] = round(time.time() - start, 1)
    path = save_trial(f"gate_{args.source}", __doc__.split("Usage:")[0].strip(), result, ["vendors", "unseen_vendor"])
    print(
        f"style P@{k}: chance {s['chance']:.3f}, style-supervised {s['style_supervised']:.3f} "
        f"(needed >= {CEILING}), pixels {s['pixels']:.3f}, random-init {s['random']:.3f} "
        f"(needed <= halfway {halfway:.3f}); style-supervised from scratch {s['style_supervised_scratch']:.3f}, "
        f"frozen ImageNet {s['imagenet']:.3f}"
    )
    if unseen is not None:
        u = result["unseen_style"]
        print(f"unseen style P@{k}: chance {u['chance']:.3f}, " + ", ".join(f"{name} {u[name]:.3f}" for name in nets))
    print(f"gate {'PASSED' if result['gate']['passed'] else 'FAILED'}; {path}")
