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
from array import array
from typing import Dict

import numpy as np

from collabfeat import images
from collabfeat.config import SimulatorConfig

EVENTS = ("view", "appreciate", "comment", "own", "like")     # "like" only in planted bad rows
VIEW, APPRECIATE, COMMENT, OWN, LIKE = range(len(EVENTS))
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

    # Rows are kept as four compact columns (user, item, event, time), not Python tuples: 18M rows
    # take about 300 MB. Negative items are planted unknown ids, user -1 is a planted empty user.
    # Every random draw is the one `rng.choice(..., p=...)` would make (one uniform number,
    # searched in the same normalised cumulative weights), so the data is the same as before.
    users, items, events_, times_ = array("i"), array("i"), array("b"), array("q")

    def add(user, item, event, t):
        users.append(user)
        items.append(item)
        events_.append(event)
        times_.append(t)

    cdfs = []
    for p in pop:
        cdf = p.cumsum()
        cdf /= cdf[-1]
        cdfs.append(cdf)
    rate_a, rate_c = cfg.appreciate_rate, cfg.comment_rate
    for u in range(cfg.n_users):
        n = activity[u]
        times = np.sort(rng.integers(0, EVENT_PERIOD_S, n)) + EPOCH
        noisy = rng.random(n) < cfg.noise
        chosen_styles = rng.choice(n_styles, n, p=tastes[u])
        strength = tastes[u] / tastes[u].max()
        for t, is_noise, s in zip(times.tolist(), noisy.tolist(), chosen_styles.tolist()):
            if is_noise:
                item = int(rng.integers(cfg.n_items))
                affinity = 0.2
            else:
                item = int(by_style[s][int(cdfs[s].searchsorted(rng.random(), side="right"))])
                affinity = strength[s]
            add(u, item, VIEW, t)
            if rng.random() < rate_a * affinity:
                add(u, item, APPRECIATE, t + 5)
            if rng.random() < rate_c * affinity:
                add(u, item, COMMENT, t + 30)
    favourite = tastes.argmax(axis=1)
    for j in range(len(item_ids)):
        fans = np.flatnonzero(favourite == styles[j])
        owner = int(rng.choice(fans)) if len(fans) else int(rng.integers(cfg.n_users))
        add(owner, j, OWN, EPOCH)

    # Planted bad rows.
    n_bad = int(round(cfg.bad_row_rate * len(users)))
    for k in range(n_bad):
        r = int(rng.integers(len(users)))
        user, item, event, t = users[r], items[r], events_[r], times_[r]
        kind = k % 3
        if kind == 0:
            add(user, -1 - k, event, t)      # unknown item: missing<k>
        elif kind == 1:
            add(user, item, LIKE, t)          # unknown event type
        else:
            add(-1, item, event, t)           # no user
    order = rng.permutation(len(users))
    with open(os.path.join(out, "logs", "logs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event", "timestamp"])
        for i in order.tolist():
            user, item = users[i], items[i]
            w.writerow((f"u{user:06d}" if user >= 0 else "", item_ids[item] if item >= 0 else f"missing{-1 - item}",
                        EVENTS[events_[i]], times_[i]))

    counts = np.bincount(np.frombuffer(events_, dtype=np.int8), minlength=len(EVENTS))
    events = {e: int(counts[EVENTS.index(e)]) for e in ("view", "appreciate", "comment", "own")}
    sheet = {
        "source": "Fashion-MNIST (Zalando Research, MIT licence) from Debian's dataset-fashion-mnist; "
                  "behaviour simulated by collabfeat.simulate",
        "parameters": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "images": {"catalogue": int(cfg.n_items), "held_out": int(cfg.n_eval_images),
                   "resolution": "28x28 grey", "classes": list(images.FASHION_CLASSES)},
        "rows": len(users), "events": events, "planted_bad_rows": n_bad,
        "planted_bad_images": [str(item_ids[b]) for b in bad],
        "density_views": events["view"] / (cfg.n_users * cfg.n_items),
        "density_appreciations": events["appreciate"] / (cfg.n_users * cfg.n_items),
    }
    with open(os.path.join(out, "datasheet.json"), "w") as f:
        json.dump(sheet, f, indent=1)
    return sheet
