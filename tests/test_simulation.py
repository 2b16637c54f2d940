"""The simulator's logs carry the planted structure, and MF recovers it."""
import csv
import filecmp
import hashlib
import json
import os

import numpy as np
import pytest

from collabfeat.config import MFConfig, SimulatorConfig, TransformConfig
from collabfeat.simulate import simulate
from collabfeat.trainer import mf
from collabfeat.transform.aggregate import pair_weight, validate_row

SMALL = SimulatorConfig(n_users=2500, n_items=1500, n_eval_images=50, mean_views_per_user=30)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sim"))
    return out, simulate(SMALL, out)


def weighted_pairs(out, catalogue):
    weights = TransformConfig().event_weights
    counts = {}
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        for row in csv.DictReader(f):
            status, v = validate_row({"user": row["user_id"], "item": row["item_id"], "event": row["event"]},
                                     weights, catalogue)
            if status == "ok":
                counts.setdefault(v[:2], {}).setdefault(v[2], 0)
                counts[v[:2]][v[2]] += 1
    return {k: pair_weight(c, weights) for k, c in counts.items() if pair_weight(c, weights) > 0}


def test_simulator_is_deterministic_and_heavy_tailed(data, tmp_path):
    out, sheet = data
    again = str(tmp_path / "again")
    simulate(SMALL, again)
    assert filecmp.cmp(os.path.join(out, "logs", "logs.csv"), os.path.join(again, "logs", "logs.csv"), shallow=False)
    assert sheet["events"]["appreciate"] < sheet["events"]["view"]
    views = {}
    with open(os.path.join(out, "logs", "logs.csv")) as f:
        for row in csv.DictReader(f):
            if row["event"] == "view" and row["user_id"]:
                views[row["user_id"]] = views.get(row["user_id"], 0) + 1
    v = np.sort(np.array(list(views.values())))[::-1]
    assert v[: len(v) // 10].sum() > 0.25 * v.sum()       # the most active tenth make over a quarter of views
    assert sheet["planted_bad_rows"] > 0 and len(sheet["planted_bad_images"]) == SMALL.bad_image_count
    assert json.load(open(os.path.join(out, "datasheet.json")))["rows"] == sheet["rows"]


# The small set's logs, as the simulator wrote them before its rows became compact columns
# (2026-11-23): the same seed must keep giving the same data, byte for byte.
SMALL_LOGS_SHA256 = "a0facc6bc58b564253b9e2ab22c318d3ea73bf439efc15add79b075dd6dac5c5"


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
    assert sum(r["event"] == "own" and id(r) not in planted_ids for r in rows) == SMALL.n_items   # one owner each


def test_mf_recovers_the_planted_styles(data):
    out, _ = data
    with open(os.path.join(out, "items.csv")) as f:
        style = {r["item_id"]: int(r["label"]) for r in csv.DictReader(f)}
    pairs = weighted_pairs(out, set(style))
    users = {u: i for i, u in enumerate(sorted({u for u, _ in pairs}))}
    items = {t: i for i, t in enumerate(sorted({t for _, t in pairs}))}
    arr = np.array([(users[u], items[t], w) for (u, t), w in pairs.items()])
    labels = np.array([style[t] for t in sorted(items)])
    f = mf.train(arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2] / arr[:, 2].max(),
                 len(users), len(items), MFConfig(epochs=10))
    chance = ((np.bincount(labels) / len(labels)) ** 2).sum()
    agreement = mf.neighbour_agreement(f.items, labels, 10)
    assert agreement > 3 * chance, (agreement, chance)
