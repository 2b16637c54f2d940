"""The default catalogue (the same emoji by several vendors) and the transfer set's labels."""

import csv
import dataclasses
import hashlib
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from collabfeat import emoji
from collabfeat.config import SimulatorConfig
from collabfeat.simulate import OPENCLIPART_DIR, simulate, transfer_files, transfer_set

SMALL = SimulatorConfig(n_users=300, n_transfer_images=0, bad_image_count=2)


def rows(out, name):
    with open(os.path.join(out, name)) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("emoji"))
    return out, simulate(SMALL, out, "emoji")


def test_every_emoji_is_drawn_by_every_vendor_without_skin_tones_or_flags():
    found = emoji.load()
    assert len(found) > 1000
    assert not {e.category for e in found} & set(emoji.EXCLUDED_CATEGORIES)
    tones = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
    assert not [e.code for e in found if any(t in e.code for t in tones)]
    assert len({e.code for e in found}) == len(found)
    for e in found[::97]:
        assert set(e.images) == set(emoji.VENDORS)
        for vendor, path in e.images.items():
            with Image.open(os.path.join(emoji.DATA_DIR, path)) as im:
                assert im.size == (64, 64), (vendor, path)


def test_style_is_the_vendor_crossed_with_category_and_the_split_is_by_emoji(data):
    out, sheet = data
    catalogue, held, unseen = rows(out, "items.csv"), rows(out, "eval_items.csv"), rows(out, "unseen_items.csv")
    vendors = SMALL.vendors

    def code(r):
        return r["item_id"].split("-", 1)[1]

    for table in (catalogue, held):
        by_code = {}
        for r in table:
            vendor = r["item_id"].split("-", 1)[0]
            assert int(r["style"]) == vendors.index(vendor)  # style = vendor
            by_code.setdefault(code(r), set()).add(vendor)
        assert all(v == set(vendors) for v in by_code.values())  # every vendor's drawing of each emoji
        cells = Counter((r["label"], r["style"]) for r in table)
        for label in {r["label"] for r in table}:  # crossed exactly
            assert len({cells[label, str(s)] for s in range(len(vendors))}) == 1
    assert not {code(r) for r in catalogue} & {code(r) for r in held}  # split by identity
    assert {code(r) for r in unseen} == {code(r) for r in held}
    assert {r["style"] for r in unseen} == {str(len(vendors))}
    assert all(r["item_id"].startswith(SMALL.unseen_vendor + "-") for r in unseen)
    assert sheet["styles"]["unseen"] == SMALL.unseen_vendor
    # the images are the vendors' own files, transparency and all
    with Image.open(os.path.join(out, "images", held[0]["image"])) as im:
        assert im.mode in ("RGBA", "P", "LA")
        assert np.asarray(im.convert("RGBA"))[..., 3].min() == 0
    # and users' logs name only catalogue items
    ids = {r["item_id"] for r in catalogue}
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        logged = {r["item_id"] for r in csv.DictReader(f) if not r["item_id"].startswith("missing")}
    assert logged <= ids and not logged & {r["item_id"] for r in held + unseen}


def test_the_datasheet_states_the_taste_weights_and_why(data):
    _, sheet = data
    assert sheet["tastes"]["style_weight"] == SMALL.style_weight
    assert "Behance" in sheet["tastes"]["why"]


def _png(path, colour):
    Image.new("RGB", (8, 8), colour).save(path)


def test_transfer_files_drop_links_duplicates_and_images_with_two_labels(tmp_path):
    root = tmp_path / "png"
    for cat in ("animals", "food", "unsorted"):
        (root / cat / "sub").mkdir(parents=True)
    for i in range(45):
        _png(root / "animals" / f"a{i}.png", (i, 0, 0))
        _png(root / "food" / "sub" / f"f{i}.png", (0, i + 1, 0))
    _png(root / "animals" / "copy.png", (3, 0, 0))  # the same image twice in one category
    _png(root / "food" / "both.png", (200, 200, 200))  # one image in two categories
    _png(root / "animals" / "both.png", (200, 200, 200))
    os.symlink(root / "food" / "sub" / "f1.png", root / "animals" / "link.png")
    found, dropped = transfer_files(str(root))
    assert sorted(found) == ["animals", "food"]
    assert dropped == {"symlinks": 1, "duplicates": 1, "in_two_categories": 2}
    every = [p for paths in found.values() for p in paths]
    assert not any(p.endswith(("link.png", "both.png")) for p in every)
    assert len(found["animals"]) == len(found["food"]) == 45


@pytest.mark.skipif(not os.path.isdir(OPENCLIPART_DIR), reason="openclipart-png is unpacked by env/run")
def test_the_transfer_sample_holds_no_image_twice():
    """On the real package: no symlink, no two files with the same content, so no image with two labels."""
    paths, labels, names, dropped = transfer_set(2000, np.random.default_rng(8))
    assert dropped["symlinks"] > 1000  # the package links 1,221 names to other files
    assert not [p for p in paths if os.path.islink(p)]
    digests = {}
    for p, label in zip(paths, labels):
        with open(p, "rb") as f:
            d = hashlib.sha256(f.read()).hexdigest()
        assert d not in digests, f"{p} duplicates {digests[d][0]}"
        digests[d] = (p, label)
    assert len(names) >= 10


def test_fashion_stays_a_selectable_source(tmp_path):
    out = str(tmp_path / "f")
    sheet = simulate(dataclasses.replace(SMALL, n_items=200, n_eval_images=40), out, "fashion")
    assert "Fashion-MNIST" in sheet["source"] and not os.path.exists(os.path.join(out, "unseen_items.csv"))
    assert len(rows(out, "items.csv")) == 200


def test_augmentation_grows_the_catalogue_with_variations_that_keep_category_and_style(tmp_path):
    """simulator.augment: items beyond the source's images are seeded variations of catalogue images, each
    with its source's category and style, its own image file, and a place in the logs like any item."""
    out = str(tmp_path / "a")
    cfg = dataclasses.replace(SMALL, n_items=240, n_eval_images=30, augment=True, bad_image_count=0)
    base = dataclasses.replace(cfg, augment=False, n_items=10**6)
    sheet = simulate(cfg, out, "fashion")
    items = rows(out, "items.csv")
    assert len(items) == sheet["items"] == 240 and sheet["augmented"]["items"] == 0  # fashion has enough
    out = str(tmp_path / "e")
    n_source = simulate(base, str(tmp_path / "s"), "emoji")["images"]["catalogue"]  # every emoji the source has
    sheet = simulate(dataclasses.replace(cfg, n_items=n_source + 90), out, "emoji")
    items = {r["item_id"]: r for r in rows(out, "items.csv")}
    assert len(items) == sheet["items"] == n_source + 90 and sheet["augmented"]["items"] == 90
    made = [i for i in items if i.startswith("a")]
    assert len(made) == 90
    for item in made:
        src = items[item.split("-", 1)[1]]
        assert (items[item]["label"], items[item]["style"]) == (src["label"], src["style"])
        a = np.asarray(Image.open(os.path.join(out, "images", items[item]["image"])).convert("RGBA"), float)
        b = np.asarray(Image.open(os.path.join(out, "images", src["image"])).convert("RGBA"), float)
        assert a.shape == b.shape and not np.array_equal(a, b)  # a variation, not a copy
    logged = {r["item_id"] for r in rows(out, os.path.join("logs", "logs.csv"))}
    assert set(made) <= logged  # every made item has at least its owner's row
