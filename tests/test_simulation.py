"""The simulator's logs carry the planted structure, and MF recovers it."""

import csv
import dataclasses
import filecmp
import hashlib
import json
import os

import numpy as np
import pytest

from collabfeat.config import MFConfig, SimulatorConfig, TransformConfig
from collabfeat.simulate import simulate
from trainer import mf
from transform.aggregate import pair_weight, validate_row

SMALL = SimulatorConfig(n_users=2500, n_items=1500, n_eval_images=50, mean_views_per_user=30, n_transfer_images=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sim"))
    return out, simulate(SMALL, out, "fashion")


def weighted_pairs(out, catalogue):
    weights = TransformConfig().event_weights
    counts = {}
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        for row in csv.DictReader(f):
            status, v = validate_row(
                {"user": row["user_id"], "item": row["item_id"], "event": row["event"]}, weights, catalogue
            )
            if status == "ok":
                counts.setdefault(v[:2], {}).setdefault(v[2], 0)
                counts[v[:2]][v[2]] += 1
    return {k: pair_weight(c, weights) for k, c in counts.items() if pair_weight(c, weights) > 0}


def test_simulator_is_deterministic_and_heavy_tailed(data, tmp_path):
    out, sheet = data
    again = str(tmp_path / "again")
    simulate(SMALL, again, "fashion")
    assert filecmp.cmp(os.path.join(out, "logs", "logs.csv"), os.path.join(again, "logs", "logs.csv"), shallow=False)
    assert sheet["events"]["appreciate"] < sheet["events"]["view"]
    views = {}
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        for row in csv.DictReader(f):
            if row["event"] == "view" and row["user_id"]:
                views[row["user_id"]] = views.get(row["user_id"], 0) + 1
    v = np.sort(np.array(list(views.values())))[::-1]
    assert v[: len(v) // 10].sum() > 0.25 * v.sum()  # the most active tenth make over a quarter of views
    assert sheet["planted_bad_rows"] > 0 and len(sheet["planted_bad_images"]) == SMALL.bad_image_count
    assert json.load(open(os.path.join(out, "datasheet.json")))["rows"] == sheet["rows"]


# The small set's logs as the vectorised simulator (drawn in blocks of users, streamed to the file) wrote
# them: the same seed must keep giving the same data, byte for byte.
SMALL_LOGS_SHA256 = "7b6a6bbe68930db755dccd4773dde4a945daccc880af0a491aef797abef732f4"


def test_datasheet_counts_what_the_log_file_holds(data):
    out, sheet = data
    with open(os.path.join(out, "logs", "logs.csv"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SMALL_LOGS_SHA256
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sheet["rows"]
    for event in ("view", "appreciate", "comment", "own"):
        assert sum(r["event"] == event for r in rows) == sheet["events"][event], event
    planted = [r for r in rows if r["event"] == "like" or not r["user_id"] or r["item_id"].startswith("missing")]
    assert len(planted) == sheet["planted_bad_rows"]
    planted_ids = {id(r) for r in planted}
    assert sum(r["event"] == "own" and id(r) not in planted_ids for r in rows) == SMALL.n_items  # one owner each


def read_items(out, name="items.csv"):
    with open(os.path.join(out, name)) as f:
        return list(csv.DictReader(f))


def test_styles_are_independent_of_categories_and_rendered_into_the_pixels(data):
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from collabfeat import images

    out, sheet = data
    rows = read_items(out)
    cat = np.array([int(r["label"]) for r in rows])
    style = np.array([int(r["style"]) for r in rows])
    # independent: every (category, style) cell is filled about as the product of the margins says
    table = np.zeros((cat.max() + 1, SMALL.n_styles))
    np.add.at(table, (cat, style), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 120, chi2  # 63 degrees of freedom: p ~ 1e-5 at 120
    # rendered: the garment keeps its photo's shape (the grey photo's non-black pixels) ...
    train_x, _ = images.fashion_mnist("train")
    keep = [i for i, r in enumerate(rows) if r["item_id"] not in sheet["planted_bad_images"]]
    pix = np.stack([np.asarray(Image.open(os.path.join(out, "images", rows[i]["image"])).convert("RGB")) for i in keep])
    originals = train_x[[int(rows[i]["item_id"][1:]) for i in keep]]
    assert ((pix.max(axis=3) > 0) == (originals > 0)).mean() > 0.97
    # ... and the style is in the pixels: a linear model on translation-invariant features (the
    # channels' Fourier magnitudes) names it on images it was not fitted on, far above chance
    feats = np.abs(np.fft.fft2(pix.astype(np.float32) / 255, axes=(1, 2)))[:, :10, :10].reshape(len(pix), -1)
    y = style[keep]
    half = len(y) // 2
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    acc = model.fit(feats[:half], y[:half]).score(feats[half:], y[half:])
    assert acc > 0.8, acc
    # ... whereas the grey photo alone (what the category is) says nothing about it
    grey = np.abs(np.fft.fft2(originals.astype(np.float32) / 255))[:, :10, :10].reshape(len(originals), -1)
    assert model.fit(grey[:half], y[:half]).score(grey[half:], y[half:]) < 0.25


def co_view_agreement(out, column):
    """How often two items one user viewed share `column`'s value (style or label)."""
    value = {r["item_id"]: int(r[column]) for r in read_items(out)}
    by_user = {}
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        for row in csv.DictReader(f):
            if row["event"] == "view" and row["user_id"] and row["item_id"] in value:
                by_user.setdefault(row["user_id"], []).append(value[row["item_id"]])
    same = total = 0
    for v in by_user.values():
        counts = np.bincount(v)
        same += (counts * (counts - 1)).sum()
        total += len(v) * (len(v) - 1)
    return same / total


def test_users_follow_their_style_taste_with_its_weight(data, tmp_path):
    out, _ = data
    chance = 1 / SMALL.n_styles
    assert co_view_agreement(out, "style") > 2 * chance
    assert co_view_agreement(out, "label") > 1.3 * 0.1
    blind = str(tmp_path / "blind")
    simulate(dataclasses.replace(SMALL, style_weight=0.0, n_users=800), blind, "fashion")
    assert co_view_agreement(blind, "style") == pytest.approx(chance, abs=0.01)


def test_the_transfer_set_is_labelled_clip_art_from_openclipart(tmp_path):
    from collabfeat.simulate import OPENCLIPART_DIR

    out = str(tmp_path / "t")
    sheet = simulate(dataclasses.replace(SMALL, n_users=50, n_items=100, n_transfer_images=90), out, "fashion")
    rows = read_items(out, "transfer_items.csv")
    assert len(rows) == sheet["transfer"]["images"] >= 80
    labels = np.array([int(r["label"]) for r in rows])
    assert len(np.unique(labels)) == len(sheet["transfer"]["categories"]) >= 10  # spread over categories
    assert os.path.isdir(OPENCLIPART_DIR)
    from PIL import Image

    im = Image.open(os.path.join(out, "images", rows[0]["image"]))
    assert im.size == (64, 64) and im.mode == "RGB"


def test_mf_recovers_the_planted_styles(data):
    out, _ = data
    style = {r["item_id"]: int(r["style"]) for r in read_items(out)}
    pairs = weighted_pairs(out, set(style))
    users = {u: i for i, u in enumerate(sorted({u for u, _ in pairs}))}
    items = {t: i for i, t in enumerate(sorted({t for _, t in pairs}))}
    arr = np.array([(users[u], items[t], w) for (u, t), w in pairs.items()])
    labels = np.array([style[t] for t in sorted(items)])
    f = mf.train(
        arr[:, 0].astype(int),
        arr[:, 1].astype(int),
        arr[:, 2] / arr[:, 2].max(),
        len(users),
        len(items),
        MFConfig(epochs=10),
    )
    chance = ((np.bincount(labels) / len(labels)) ** 2).sum()
    agreement = mf.neighbour_agreement(f.items, labels, 10)
    assert agreement > 3 * chance, (agreement, chance)
