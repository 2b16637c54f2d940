"""A seeded simulator of a Behance-like site over real images.

No public behaviour log with images is reachable, so the embedded default data is made here
and written exactly as a user would bring their own (see README, "Your own data"):

  <out>/items.csv          item_id,image,label,style   the catalogue
  <out>/eval_items.csv     item_id,image,label,style   held-out images, never in the logs
  <out>/unseen_items.csv   item_id,image,label,style   held-out images in a style the catalogue lacks (emoji)
  <out>/transfer_items.csv item_id,image,label         clip art from another source (openclipart-png)
  <out>/images/*.png       the images
  <out>/logs/logs.csv      user_id,item_id,event,timestamp
  <out>/datasheet.json     parameters and measured statistics

Two facets, independent of each other, a category and a style. With data.source "emoji" (the
default) the images are real drawings: the same emoji by several vendors (collabfeat/emoji.py);
the category is the emoji's category and the style is the vendor, whose drawing style nobody here
made. The split is by emoji identity: every vendor's drawing of an emoji is on the same side of
catalogue / held-out. One vendor (simulator.unseen_vendor) is in no catalogue and no training:
its drawings of the held-out emoji test whether features group a style they never saw.
With data.source "fashion", the images are Fashion-MNIST's photos and the style is a print in a
colourway rendered here (STYLES).

Users have Dirichlet tastes over styles and over categories and follow each with its own weight
(simulator.style_weight, category_weight); their activity is lognormal (heavy-tailed); within a
(category, style) cell, item popularity is Zipf. A share of views ignores taste (noise).
Appreciations and comments are subsets of views, likelier on a user's strong tastes. Each item
has an owner ("own" event), a user whose favourite style it is. A small number of bad rows and
bad image files are planted on purpose, so that the reject accounting has something real to count.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image

from collabfeat import emoji, images
from collabfeat.config import SimulatorConfig

EVENTS = ("view", "appreciate", "comment", "own", "like")  # "like" only in planted bad rows
VIEW, APPRECIATE, COMMENT, OWN, LIKE = range(len(EVENTS))
EVENT_PERIOD_S = 90 * 24 * 3600
EPOCH = 1_700_000_000


PRINTS = ("plain", "stripes", "dots", "checks")
COLOURWAYS = 4
# env/run unpacks the package into the venv; an image with it installed (kubeflow/Dockerfile) has it in /usr
OPENCLIPART_DIR = os.environ.get("COLLABFEAT_OPENCLIPART_DIR") or next(
    (
        d
        for d in (
            os.path.join(
                sys.prefix, "share", "collabfeat-data", "openclipart-png", "usr", "share", "openclipart", "png"
            ),
            "/usr/share/openclipart/png",
        )
        if os.path.isdir(d)
    ),
    "/usr/share/openclipart/png",
)
# openclipart's top-level folders that are categories of things (not "unsorted", "special", ...)
TRANSFER_MIN_PER_CATEGORY = 40
TRANSFER_EXCLUDED = ("unsorted", "special", "buttons", "logos")
TRANSFER_SIZE = 64


def style_of(s: int) -> tuple[int, int]:
    """Style s -> (print, colourway): all 16 pairs for s < 16, each print in several colourways."""
    return s % len(PRINTS), (s % len(PRINTS) + s // len(PRINTS)) % COLOURWAYS


def _hsv(h, s, v):
    """HSV in [0, 1] (arrays) -> RGB in [0, 1], [..., 3]."""
    i = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.stack([np.select([i == k for k in range(6)], [c[ch] for c in table]) for ch in range(3)], -1)


def render(grey: np.ndarray, styles: np.ndarray, rng, hue0: float) -> np.ndarray:
    """Grey photos [n, H, W] and their styles -> RGB [n, H, W, 3]: the garment (its grey levels
    as shading) in the style's print and colourway; the black background stays black. Per image the
    hue shifts by up to +-0.04, the saturation by +-0.1 and the print's phase is random, so that no
    two images of a style have the same pixels."""
    n, h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((n, h, w, 3), np.float32)
    for j in range(n):
        pr, cw = style_of(int(styles[j]))
        hue = (hue0 + cw / COLOURWAYS + rng.uniform(-0.04, 0.04)) % 1.0
        sat = float(np.clip(0.65 + rng.uniform(-0.1, 0.1), 0, 1))
        base = _hsv(np.float32(hue), np.float32(sat), np.float32(1.0))
        accent = _hsv(np.float32((hue + 0.08) % 1.0), np.float32(0.9), np.float32(0.35))
        dy, dx = rng.uniform(0, 8, 2)
        if PRINTS[pr] == "stripes":
            mask = ((yy + dy) % 6) < 2.5
        elif PRINTS[pr] == "dots":
            mask = (((yy + dy) % 6 - 3) ** 2 + ((xx + dx) % 6 - 3) ** 2) < 2.6
        elif PRINTS[pr] == "checks":
            mask = (((yy + dy) // 4 + (xx + dx) // 4) % 2) == 0
        else:
            mask = np.zeros((h, w), bool)
        fabric = np.where(mask[..., None], accent, base)
        out[j] = fabric * (grey[j].astype(np.float32)[..., None] / 255.0)
    return np.round(out * 255).astype(np.uint8)


def transfer_files(directory: str = "") -> tuple[dict[str, list[str]], dict[str, int]]:
    """openclipart's categories (top-level folders with enough images) -> their PNG files, each
    image once: symlinks are dropped (the package links 1,221 names to other files), files are
    deduplicated by content (SHA-256), and an image found under two categories is dropped from
    both, so that no image carries two labels. -> (category -> sorted paths, what was dropped)."""
    directory = directory or OPENCLIPART_DIR
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{directory} not found: the Debian package openclipart-png provides the transfer "
            "images (unpacked into the environment by env/run); or set simulator.n_transfer_images=0"
        )
    by_hash: dict[str, dict[str, str]] = {}  # content -> category -> first path
    dropped = {"symlinks": 0, "duplicates": 0, "in_two_categories": 0}
    for cat in sorted(os.listdir(directory)):
        top = os.path.join(directory, cat)
        if cat in TRANSFER_EXCLUDED or os.path.islink(top) or not os.path.isdir(top):
            continue
        for root, dirs, fs in os.walk(top):
            dirs.sort()
            for f in sorted(fs):
                path = os.path.join(root, f)
                if not f.endswith(".png"):
                    continue
                if os.path.islink(path):
                    dropped["symlinks"] += 1
                    continue
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                seen = by_hash.setdefault(digest, {})
                if cat in seen:
                    dropped["duplicates"] += 1
                else:
                    seen[cat] = path
    files: dict[str, list[str]] = {}
    for seen in by_hash.values():
        if len(seen) > 1:
            dropped["in_two_categories"] += len(seen)
            continue
        ((cat, path),) = seen.items()
        files.setdefault(cat, []).append(path)
    return {c: sorted(p) for c, p in sorted(files.items()) if len(p) >= TRANSFER_MIN_PER_CATEGORY}, dropped


def transfer_set(n: int, rng, directory: str = "") -> tuple[list[str], np.ndarray, list[str], dict[str, int]]:
    """A seeded sample of openclipart's labelled clip art (transfer_files: each image once, with
    one label): (paths, labels, category names, what was dropped), at most ceil(n / categories)
    per category."""
    by_category, dropped = transfer_files(directory)
    names, files = list(by_category), list(by_category.values())
    per = -(-n // len(names))
    paths, labels = [], []
    for label, found in enumerate(files):
        pick = np.sort(rng.choice(len(found), min(per, len(found)), replace=False))
        paths += [found[i] for i in pick]
        labels += [label] * len(pick)
    keep = np.sort(rng.choice(len(paths), min(n, len(paths)), replace=False))
    return [paths[i] for i in keep], np.array(labels)[keep], names, dropped


def clip_art(path: str, size: int = TRANSFER_SIZE) -> np.ndarray:
    """A clip-art PNG -> RGB [size, size, 3]: composited on white, fitted into the square."""

    with Image.open(path) as im:
        im = im.convert("RGBA")
        im.thumbnail((size, size))
        canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
        canvas.alpha_composite(im, ((size - im.width) // 2, (size - im.height) // 2))
        return np.asarray(canvas.convert("RGB"))


def _tempered(p: np.ndarray, weight: float) -> np.ndarray:
    """Tastes [users, k] sharpened (weight > 1), kept (1), flattened (< 1) or ignored (0)."""
    t = p**weight
    return t / t.sum(axis=1, keepdims=True)


def _zipf_weights(rng, n, exponent):
    w = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(w)
    return w / w.sum()


def _write_items(out: str, name: str, rows: list[tuple[str, bytes, int, int]], style: bool = True) -> None:
    """An item table <out>/<name> and its images: rows of (item id, PNG bytes, label, style)."""
    with open(os.path.join(out, name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "image", "label"] + (["style"] if style else []))
        for item, png, label, facet in rows:
            with open(os.path.join(out, "images", f"{item}.png"), "wb") as img:
                img.write(png)
            w.writerow([item, f"{item}.png", int(label)] + ([int(facet)] if style else []))


def _fashion(cfg: SimulatorConfig, out: str, rng) -> dict:
    """Fashion-MNIST's photos in prints rendered here (data.source=fashion)."""
    train_x, train_y = images.fashion_mnist("train")
    test_x, test_y = images.fashion_mnist("test")
    if cfg.n_items > len(train_x) or cfg.n_eval_images > len(test_x):
        raise ValueError(f"at most {len(train_x)} catalogue and {len(test_x)} held-out images")
    cat_idx = np.sort(rng.choice(len(train_x), cfg.n_items, replace=False))
    eval_idx = np.sort(rng.choice(len(test_x), cfg.n_eval_images, replace=False))
    item_ids = [f"p{i:05d}" for i in cat_idx]
    categories = train_y[cat_idx].astype(int)
    # Styles: drawn independently of category, for the catalogue and the held-out photos alike.
    styles = rng.integers(cfg.n_styles, size=cfg.n_items)
    eval_styles = rng.integers(cfg.n_styles, size=cfg.n_eval_images)
    hue0 = float(rng.random())
    _write_items(
        out,
        "items.csv",
        list(zip(item_ids, map(images.encode_png, render(train_x[cat_idx], styles, rng, hue0)), categories, styles)),
    )
    _write_items(
        out,
        "eval_items.csv",
        list(
            zip(
                [f"t{i:05d}" for i in eval_idx],
                map(images.encode_png, render(test_x[eval_idx], eval_styles, rng, hue0)),
                test_y[eval_idx],
                eval_styles,
            )
        ),
    )
    return {
        "item_ids": item_ids,
        "categories": categories,
        "styles": styles,
        "n_categories": len(images.FASHION_CLASSES),
        "n_styles": cfg.n_styles,
        "sheet": {
            "source": "Fashion-MNIST (Zalando Research, MIT licence) from Debian's dataset-fashion-mnist",
            "images": {
                "catalogue": len(item_ids),
                "held_out": len(eval_idx),
                "classes": list(images.FASHION_CLASSES),
                "resolution": "28x28, grey photos rendered in their style's colours",
            },
            "styles": {
                "what": "a print in a colourway, drawn uniformly at random per image, independent of category",
                "styles": {s: f"{PRINTS[style_of(s)[0]]}, colourway {style_of(s)[1]}" for s in range(cfg.n_styles)},
                "catalogue_counts": np.bincount(styles, minlength=cfg.n_styles).tolist(),
            },
        },
    }


def _emoji(cfg: SimulatorConfig, out: str, rng) -> dict:
    """The same emoji drawn by several vendors (data.source=emoji, the default): style = vendor,
    category = the emoji's category, split by emoji identity; the unseen vendor's drawings of the
    held-out emoji go to unseen_items.csv. The images are the packages' own files, alpha and all."""
    found = emoji.load()
    names = emoji.categories(found)
    vendors = list(cfg.vendors)
    order = rng.permutation(len(found))
    n_held = int(round(len(found) * cfg.heldout_fraction))
    held = np.sort(order[:n_held][: max(1, cfg.n_eval_images // len(vendors))])
    catalogue = np.sort(order[n_held:][: max(1, cfg.n_items // len(vendors))])
    styles_of = {v: s for s, v in enumerate(vendors + ([cfg.unseen_vendor] if cfg.unseen_vendor else []))}

    def rows(which, among):
        out_rows = []
        for j in which:
            e = found[j]
            for v in among:
                with open(os.path.join(emoji.DATA_DIR, e.images[v]), "rb") as f:
                    out_rows.append((f"{v}-{e.code.lower()}", f.read(), names.index(e.category), styles_of[v]))
        return out_rows

    cat_rows = rows(catalogue, vendors)
    _write_items(out, "items.csv", cat_rows)
    _write_items(out, "eval_items.csv", rows(held, vendors))
    if cfg.unseen_vendor:
        _write_items(out, "unseen_items.csv", rows(held, [cfg.unseen_vendor]))
    styles = np.array([r[3] for r in cat_rows])
    return {
        "item_ids": [r[0] for r in cat_rows],
        "categories": np.array([r[2] for r in cat_rows]),
        "styles": styles,
        "n_categories": len(names),
        "n_styles": len(vendors),
        "sheet": {
            "source": "the same emoji drawn by several vendors, from npm packages (env/emoji.sh): "
            + "; ".join(emoji.LICENCES[v] for v in styles_of),
            "images": {
                "catalogue": len(cat_rows),
                "catalogue_emoji": len(catalogue),
                "held_out": len(held) * len(vendors),
                "held_out_emoji": len(held),
                "unseen": len(held) if cfg.unseen_vendor else 0,
                "classes": names,
                "resolution": "64x64 RGBA as the vendors ship them (SVG vendors rendered at 64 px); "
                "transparent pixels are composited on data.background by the preprocessing",
            },
            "styles": {
                "what": "the vendor whose drawing it is; every emoji is drawn by every vendor, so style "
                "and category are crossed exactly",
                "styles": {s: v for v, s in styles_of.items()},
                "unseen": cfg.unseen_vendor or None,
                "catalogue_counts": np.bincount(styles, minlength=len(vendors)).tolist(),
            },
            "split": "by emoji identity, seeded: every vendor's drawing of an emoji is on the same side",
        },
    }


WHY_WEIGHTS = (
    "On design sites such as Behance and Dribbble, people follow creators and collect into mood boards "
    "by how a piece looks: its drawing style carries across subjects (whoever likes flat outlined "
    "drawings likes them for food, animals and signs alike), so users follow their taste in style as "
    "drawn (style_weight 1.0). What a piece depicts matters too, but less sharply: site categories "
    "(creative fields) are broad and a user browses several, so the taste in category is flattened "
    "(category_weight 0.5). These weights were chosen before any evaluation and are not tuned to it; "
    "bench/sweep.py reports the quality table over a grid of both."
)


def simulate(cfg: SimulatorConfig, out: str, source: str = "emoji") -> dict:
    rng = np.random.default_rng(cfg.seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    if source == "emoji":
        made = _emoji(cfg, out, rng)
    elif source == "fashion":
        made = _fashion(cfg, out, rng)
    else:
        raise ValueError(f"data.source must be 'emoji' or 'fashion', not {source!r}")
    item_ids, categories, styles = list(made["item_ids"]), made["categories"], made["styles"]
    augmented: dict = {"items": 0}
    if cfg.augment and cfg.n_items > len(item_ids):
        augmented = _augment(cfg, out, item_ids, categories, styles)
        item_ids, categories, styles = augmented.pop("item_ids"), augmented.pop("categories"), augmented.pop("styles")
    transfer = _transfer(cfg, out) if cfg.n_transfer_images else {}

    # Planted bad images: some files deleted, some overwritten with garbage.
    n_items = len(item_ids)
    bad = rng.choice(n_items, min(cfg.bad_image_count, n_items), replace=False)
    for j, b in enumerate(bad):
        path = os.path.join(out, "images", f"{item_ids[b]}.png")
        if j % 2:
            os.remove(path)
        else:
            with open(path, "wb") as f:
                f.write(b"this is not an image")

    tastes = Tastes.draw(cfg, categories, styles, made["n_categories"], made["n_styles"], rng)
    written = write_logs(cfg, tastes, item_ids, os.path.join(out, "logs", "logs.csv"))
    events = {e: written["events"][e] for e in ("view", "appreciate", "comment", "own")}
    sheet = {
        **made["sheet"],
        "behaviour": "simulated by collabfeat.simulate",
        "parameters": {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "source": source},
        "tastes": {"style_weight": cfg.style_weight, "category_weight": cfg.category_weight, "why": WHY_WEIGHTS},
        "augmented": augmented,
        "transfer": transfer,
        "users": cfg.n_users,
        "items": n_items,
        "rows": written["rows"],
        "events": events,
        "planted_bad_rows": written["bad_rows"],
        "planted_bad_images": [str(item_ids[b]) for b in bad],
        "density_views": events["view"] / (cfg.n_users * n_items),
        "density_appreciations": events["appreciate"] / (cfg.n_users * n_items),
    }
    with open(os.path.join(out, "datasheet.json"), "w") as f:
        json.dump(sheet, f, indent=1)
    return sheet


def _transfer(cfg: SimulatorConfig, out: str) -> dict:
    """transfer_items.csv: labelled clip art from openclipart-png, the transfer facet; its datasheet entry."""
    paths, labels, names, dropped = transfer_set(cfg.n_transfer_images, np.random.default_rng(cfg.seed + 1))
    arts, skipped = [], []
    for i, (p, label) in enumerate(zip(paths, labels)):
        try:
            arts.append((f"c{i:05d}", images.encode_png(clip_art(p)), label, -1))
        except Exception as e:  # a few of openclipart's PNGs are huge (PIL's bomb guard) or broken
            skipped.append(f"{os.path.relpath(p, OPENCLIPART_DIR)}: {type(e).__name__}")
    _write_items(out, "transfer_items.csv", arts, style=False)
    return {
        "source": "openclipart-png (Debian, public domain): top-level folders as categories",
        "images": len(arts),
        "skipped": skipped,
        "categories": names,
        "dropped": dropped,
        "resolution": f"{TRANSFER_SIZE}x{TRANSFER_SIZE} RGB, composited on white",
        "files": [os.path.relpath(p, OPENCLIPART_DIR) for p in paths[:5]] + ["..."],
    }


AUGMENTATION = "a random crop of 80-100% of the side, a horizontal flip half the time, a rotation of up to 12 degrees"


def _augment(cfg: SimulatorConfig, out: str, item_ids: list[str], categories, styles) -> dict:
    """The catalogue grown to cfg.n_items: item a<k>-<source id> is a seeded augmentation (AUGMENTATION) of
    catalogue image k mod n, with its source's category and style, appended to items.csv with its image."""
    n_source, n_new = len(item_ids), cfg.n_items - len(item_ids)
    rng = np.random.default_rng([cfg.seed, 3])
    source = np.arange(n_new) % n_source
    scale, dx, dy, flip, angle = (
        rng.uniform(0.8, 1.0, n_new),
        rng.random(n_new),
        rng.random(n_new),
        rng.random(n_new) < 0.5,
        rng.uniform(-12, 12, n_new),
    )
    originals = []
    for item in item_ids:
        with Image.open(os.path.join(out, "images", f"{item}.png")) as im:
            originals.append(im.convert("RGBA"))
    new_ids = [f"a{k}-{item_ids[j]}" for k, j in enumerate(source)]
    with open(os.path.join(out, "items.csv"), "a", newline="") as f:
        w = csv.writer(f)
        for k, j in enumerate(source):
            im = originals[j]
            side = int(round(min(im.size) * scale[k]))
            x0, y0 = int(dx[k] * (im.size[0] - side)), int(dy[k] * (im.size[1] - side))
            new = im.crop((x0, y0, x0 + side, y0 + side)).resize(im.size, Image.Resampling.BILINEAR)
            if flip[k]:
                new = new.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            new = new.rotate(float(angle[k]), resample=Image.Resampling.BILINEAR)
            new.save(os.path.join(out, "images", f"{new_ids[k]}.png"))
            w.writerow([new_ids[k], f"{new_ids[k]}.png", int(categories[j]), int(styles[j])])
    return {
        "item_ids": item_ids + new_ids,
        "categories": np.concatenate([categories, categories[source]]),
        "styles": np.concatenate([styles, styles[source]]),
        "items": n_new,
        "from_catalogue_images": n_source,
        "how": AUGMENTATION + ", seeded per item; each keeps its source image's category and style. "
        "They are variations of the catalogue's own drawings, not new drawings: retrieval among them "
        "is easier than among real distinct items.",
    }


class Tastes(NamedTuple):
    """Everything the users' behaviour is drawn from: per user, the activity and the normalised cumulative
    tastes over categories and styles (and the tastes' strongest values); per item pool (a (category,
    style) cell, then each category for cells without items), its items and their Zipf popularity."""

    activity: np.ndarray  # [users] views
    category_cdf: np.ndarray  # [users, categories]
    style_cdf: np.ndarray  # [users, styles]
    p_category: np.ndarray  # [users, categories], tempered by category_weight
    p_style: np.ndarray  # [users, styles], tempered by style_weight
    favourite: np.ndarray  # [users] style of the user's strongest style taste
    pools: list  # pool -> item indices
    pool_cdfs: list  # pool -> normalised cumulative popularity of its items
    n_styles: int
    styles: np.ndarray  # [items]

    @staticmethod
    def draw(cfg: SimulatorConfig, categories, styles, n_categories: int, n_styles: int, rng) -> Tastes:
        n_items = len(categories)
        cell_of = np.asarray(categories) * n_styles + np.asarray(styles)
        by_cell = [np.flatnonzero(cell_of == c) for c in range(n_categories * n_styles)]
        by_category = [np.flatnonzero(np.asarray(categories) == c) for c in range(n_categories)]
        pools = by_cell + by_category  # an empty cell falls back to its category
        pool_cdfs = []
        for ix in pools:
            cdf = _zipf_weights(rng, len(ix), cfg.popularity_exponent).cumsum()
            pool_cdfs.append(cdf / cdf[-1] if len(cdf) else cdf)
        style_taste = rng.dirichlet(np.full(n_styles, cfg.taste_concentration), cfg.n_users)
        category_taste = rng.dirichlet(np.full(n_categories, cfg.taste_concentration), cfg.n_users)
        p_style = _tempered(style_taste, cfg.style_weight)
        p_category = _tempered(category_taste, cfg.category_weight)
        mu = np.log(cfg.mean_views_per_user) - cfg.activity_sigma**2 / 2
        activity = np.clip(np.round(rng.lognormal(mu, cfg.activity_sigma, cfg.n_users)), 1, max(1, n_items // 2))
        return Tastes(
            activity.astype(np.int64),
            _cdf(p_category),
            _cdf(p_style),
            p_category,
            p_style,
            style_taste.argmax(axis=1),
            pools,
            pool_cdfs,
            n_styles,
            np.asarray(styles),
        )


def _cdf(p: np.ndarray) -> np.ndarray:
    c = p.cumsum(axis=1)
    return c / c[:, -1:]


def _pick(cdfs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each row's normalised cumulative weights and uniform number, the index rng.choice(p=...) draws."""
    return np.minimum((cdfs <= u[:, None]).sum(axis=1), cdfs.shape[1] - 1)


BLOCK_USERS = 2048  # users whose behaviour is drawn together (fixed: the data never depends on memory settings)


class Rows(NamedTuple):
    user: np.ndarray  # -1: a planted row without a user
    item: np.ndarray  # -1 - k: planted unknown item "missing<k>"
    event: np.ndarray  # EVENTS index
    time: np.ndarray


def behaviour_block(cfg: SimulatorConfig, t: Tastes, block: int) -> Rows:
    """The rows of users [block * BLOCK_USERS, ...): each user's views (a share `noise` of uniformly
    random items, the others from a (category, style) cell drawn from their tastes, Zipf-popular
    within it), with appreciations and comments likelier on their strong tastes; in random order.
    Seeded by (seed, block): a block is the same whatever else is drawn."""
    rng = np.random.default_rng([cfg.seed, 2, block])
    users = np.arange(block * BLOCK_USERS, min((block + 1) * BLOCK_USERS, cfg.n_users))
    who = np.repeat(users, t.activity[users])
    n = len(who)
    times = rng.integers(0, EVENT_PERIOD_S, n) + EPOCH
    noisy = rng.random(n) < cfg.noise
    category = _pick(t.category_cdf[who], rng.random(n))
    style = _pick(t.style_cdf[who], rng.random(n))
    cell = category * t.n_styles + style
    n_cells = len(t.pools) - t.category_cdf.shape[1]
    has_items = np.array([len(t.pools[c]) > 0 for c in range(n_cells)])
    pool = np.where(has_items[cell], cell, n_cells + category)
    u = rng.random(n)
    item = np.empty(n, np.int64)
    item[noisy] = rng.integers(len(t.styles), size=int(noisy.sum()))
    chosen = np.flatnonzero(~noisy)
    order = chosen[np.argsort(pool[chosen], kind="stable")]
    edges = np.searchsorted(pool[order], np.arange(len(t.pools) + 1))
    for p in range(len(t.pools)):
        at = order[edges[p] : edges[p + 1]]
        if len(at):
            item[at] = t.pools[p][t.pool_cdfs[p].searchsorted(u[at], side="right")]
    # affinity: the geometric mean of how strong the cell's style and category are in the user's tastes
    affinity = np.sqrt(
        t.p_category[who, category] / t.p_category[who].max(axis=1) * t.p_style[who, style] / t.p_style[who].max(axis=1)
    )
    affinity[noisy] = 0.2
    appreciated = rng.random(n) < cfg.appreciate_rate * affinity
    commented = rng.random(n) < cfg.comment_rate * affinity
    rows = Rows(
        np.concatenate([who, who[appreciated], who[commented]]),
        np.concatenate([item, item[appreciated], item[commented]]),
        np.concatenate(
            [np.full(n, VIEW), np.full(int(appreciated.sum()), APPRECIATE), np.full(int(commented.sum()), COMMENT)]
        ).astype(np.int8),
        np.concatenate([times, times[appreciated] + 5, times[commented] + 30]),
    )
    order = rng.permutation(len(rows.user))
    return Rows(*(column[order] for column in rows))


def owners(cfg: SimulatorConfig, t: Tastes) -> Rows:
    """One "own" row per item: its owner is a user whose favourite style is the item's (any user, if none)."""
    rng = np.random.default_rng([cfg.seed, 4])
    owner = rng.integers(cfg.n_users, size=len(t.styles))
    for s in np.unique(t.styles):
        fans = np.flatnonzero(t.favourite == s)
        mine = np.flatnonzero(t.styles == s)
        if len(fans):
            owner[mine] = fans[rng.integers(len(fans), size=len(mine))]
    return Rows(owner, np.arange(len(t.styles)), np.full(len(t.styles), OWN, np.int8), np.full(len(t.styles), EPOCH))


def plant_bad_rows(cfg: SimulatorConfig, rows: Rows, first: int, seed: int) -> tuple[Rows, int]:
    """Adds a share bad_row_rate of bad rows, copies of random rows made bad in turn: an unknown item
    ("missing<k>", k counting from `first`), an unknown event, no user. -> (rows, how many)."""
    n_bad = int(round(cfg.bad_row_rate * len(rows.user)))
    if not n_bad:
        return rows, 0
    rng = np.random.default_rng([cfg.seed, 5, seed])
    pick = rng.integers(len(rows.user), size=n_bad)
    bad = Rows(*(column[pick].copy() for column in rows))
    kind = (first + np.arange(n_bad)) % 3
    bad.item[kind == 0] = -1 - (first + np.flatnonzero(kind == 0))
    bad.event[kind == 1] = LIKE
    bad.user[kind == 2] = -1
    return Rows(*(np.concatenate([a, b]) for a, b in zip(rows, bad))), n_bad


def write_logs(cfg: SimulatorConfig, t: Tastes, item_ids: list[str], path: str) -> dict:
    """logs.csv (user_id,item_id,event,timestamp), block by block of BLOCK_USERS users and then the items'
    owners, each with its planted bad rows: memory holds one block, whatever the number of rows."""
    width = max(6, len(str(cfg.n_users - 1)))
    user_names = pa.array([f"u{u:0{width}d}" for u in range(cfg.n_users)] + [""])
    item_names, event_names = pa.array(item_ids), pa.array(EVENTS)
    counts, rows, bad_rows = np.zeros(len(EVENTS), np.int64), 0, 0
    blocks = -(-cfg.n_users // BLOCK_USERS)
    with open(path, "wb") as f:
        f.write(b"user_id,item_id,event,timestamp\n")
        with pacsv.CSVWriter(
            f, SCHEMA, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")
        ) as writer:
            for b in range(blocks + 1):
                block = behaviour_block(cfg, t, b) if b < blocks else owners(cfg, t)
                block, n_bad = plant_bad_rows(cfg, block, bad_rows, b)
                missing = np.flatnonzero(block.item < 0)
                names = pa.concat_arrays(
                    [item_names, pa.array([f"missing{-1 - k}" for k in block.item[missing]], pa.string())]
                )
                index = block.item.copy()
                index[missing] = len(item_ids) + np.arange(len(missing))
                user = np.where(block.user < 0, cfg.n_users, block.user)
                writer.write_batch(
                    pa.RecordBatch.from_arrays(
                        [
                            pa.DictionaryArray.from_arrays(pa.array(user, pa.int32()), user_names).dictionary_decode(),
                            pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), names).dictionary_decode(),
                            pa.DictionaryArray.from_arrays(
                                pa.array(block.event, pa.int8()), event_names
                            ).dictionary_decode(),
                            pa.array(block.time, pa.int64()),
                        ],
                        schema=SCHEMA,
                    )
                )
                counts += np.bincount(block.event, minlength=len(EVENTS))
                rows += len(block.user)
                bad_rows += n_bad
    return {"rows": rows, "bad_rows": bad_rows, "events": dict(zip(EVENTS, counts.tolist()))}


SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("event", pa.string()), ("timestamp", pa.int64())]
)
