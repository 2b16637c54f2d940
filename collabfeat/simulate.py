"""A seeded simulator of a Behance-like site over real product photos (Fashion-MNIST).

No public behaviour log with images is reachable, so the embedded default data is made here
and written exactly as a user would bring their own (see README, "Your own data"):

  <out>/items.csv        item_id,image,label     catalogue (Fashion-MNIST training photos)
  <out>/eval_items.csv   item_id,image,label     held-out labelled photos (test split), never in the logs
  <out>/images/*.png     the photos (28x28 grey, as shipped)
  <out>/logs/logs.csv    user_id,item_id,event,timestamp
  <out>/datasheet.json   parameters and measured statistics

The model: each item's hidden style is its label (the pipeline never sees labels).
Users have Dirichlet tastes over styles and lognormal (heavy-tailed) activity; within a style,
item popularity is Zipf. A share of views ignores taste (noise). Appreciations and comments are
subsets of views, likelier on a user's strong styles. Each item has an owner ("own" event).
A small number of bad rows and bad image files are planted on purpose, so that the reject
accounting has something real to count.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict

import numpy as np

from collabfeat import images
from collabfeat.config import SimulatorConfig

EVENT_PERIOD_S = 90 * 24 * 3600
EPOCH = 1_700_000_000


def _zipf_weights(rng, n, exponent):
    w = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(w)
    return w / w.sum()


def simulate(cfg: SimulatorConfig, out: str) -> Dict:
    rng = np.random.default_rng(cfg.seed)
    train_x, train_y = images.fashion_mnist("train")
    test_x, test_y = images.fashion_mnist("test")
    if cfg.n_items > len(train_x) or cfg.n_eval_images > len(test_x):
        raise ValueError(f"at most {len(train_x)} catalogue and {len(test_x)} held-out images")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)

    # Catalogue and held-out photos.
    cat_idx = np.sort(rng.choice(len(train_x), cfg.n_items, replace=False))
    eval_idx = np.sort(rng.choice(len(test_x), cfg.n_eval_images, replace=False))
    item_ids = np.array([f"p{i:05d}" for i in cat_idx])
    styles = train_y[cat_idx].astype(int)

    def write_items(path, ids, pixels, labels):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "image", "label"])
            for item, px, label in zip(ids, pixels, labels):
                name = f"{item}.png"
                with open(os.path.join(out, "images", name), "wb") as img:
                    img.write(images.encode_png(px))
                w.writerow([item, name, int(label)])

    write_items(os.path.join(out, "items.csv"), item_ids, train_x[cat_idx], styles)
    write_items(os.path.join(out, "eval_items.csv"), [f"t{i:05d}" for i in eval_idx],
                test_x[eval_idx], test_y[eval_idx])

    # Planted bad images: some files deleted, some overwritten with garbage.
    bad = rng.choice(cfg.n_items, min(cfg.bad_image_count, cfg.n_items), replace=False)
    for j, b in enumerate(bad):
        path = os.path.join(out, "images", f"{item_ids[b]}.png")
        if j % 2:
            os.remove(path)
        else:
            with open(path, "wb") as f:
                f.write(b"this is not an image")

    # Behaviour.
    n_styles = int(styles.max()) + 1
    by_style = [np.flatnonzero(styles == s) for s in range(n_styles)]
    pop = [_zipf_weights(rng, len(ix), cfg.popularity_exponent) for ix in by_style]
    tastes = rng.dirichlet(np.full(n_styles, cfg.taste_concentration), cfg.n_users)
    mu = np.log(cfg.mean_views_per_user) - cfg.activity_sigma ** 2 / 2
    activity = np.clip(np.round(rng.lognormal(mu, cfg.activity_sigma, cfg.n_users)), 1, cfg.n_items // 2).astype(int)

    rows = []
    for u in range(cfg.n_users):
        user = f"u{u:06d}"
        n = activity[u]
        times = np.sort(rng.integers(0, EVENT_PERIOD_S, n)) + EPOCH
        noisy = rng.random(n) < cfg.noise
        chosen_styles = rng.choice(n_styles, n, p=tastes[u])
        strength = tastes[u] / tastes[u].max()
        for t, is_noise, s in zip(times, noisy, chosen_styles):
            if is_noise:
                item = int(rng.integers(cfg.n_items))
                affinity = 0.2
            else:
                item = int(by_style[s][rng.choice(len(by_style[s]), p=pop[s])])
                affinity = strength[s]
            rows.append((user, item_ids[item], "view", int(t)))
            if rng.random() < cfg.appreciate_rate * affinity:
                rows.append((user, item_ids[item], "appreciate", int(t) + 5))
            if rng.random() < cfg.comment_rate * affinity:
                rows.append((user, item_ids[item], "comment", int(t) + 30))
    favourite = tastes.argmax(axis=1)
    for j, item in enumerate(item_ids):
        fans = np.flatnonzero(favourite == styles[j])
        owner = int(rng.choice(fans)) if len(fans) else int(rng.integers(cfg.n_users))
        rows.append((f"u{owner:06d}", item, "own", EPOCH))

    # Planted bad rows.
    n_bad = int(round(cfg.bad_row_rate * len(rows)))
    for k in range(n_bad):
        user, item, event, t = rows[int(rng.integers(len(rows)))]
        kind = k % 3
        if kind == 0:
            rows.append((user, f"missing{k}", event, t))    # unknown item
        elif kind == 1:
            rows.append((user, item, "like", t))             # unknown event type
        else:
            rows.append(("", item, event, t))                # no user
    order = rng.permutation(len(rows))
    with open(os.path.join(out, "logs", "logs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event", "timestamp"])
        for i in order:
            w.writerow(rows[i])

    events = {e: sum(1 for r in rows if r[2] == e) for e in ("view", "appreciate", "comment", "own")}
    sheet = {
        "source": "Fashion-MNIST (Zalando Research, MIT licence) from Debian's dataset-fashion-mnist; "
                  "behaviour simulated by collabfeat.simulate",
        "parameters": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "images": {"catalogue": int(cfg.n_items), "held_out": int(cfg.n_eval_images),
                   "resolution": "28x28 grey", "classes": list(images.FASHION_CLASSES)},
        "rows": len(rows), "events": events, "planted_bad_rows": n_bad,
        "planted_bad_images": [str(item_ids[b]) for b in bad],
        "density_views": events["view"] / (cfg.n_users * cfg.n_items),
        "density_appreciations": events["appreciate"] / (cfg.n_users * cfg.n_items),
    }
    with open(os.path.join(out, "datasheet.json"), "w") as f:
        json.dump(sheet, f, indent=1)
    return sheet
