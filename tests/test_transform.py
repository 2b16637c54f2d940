"""The Beam log transform on small pipelines with answers computed by hand."""
import glob
import json
import math
import os
import tempfile
from collections import Counter

import apache_beam as beam
import numpy as np
import pytest

from collabfeat.config import TransformConfig
from collabfeat.transform import aggregate


def run(rows, cfg, catalogue=None):
    """Runs AggregateLogs; -> {"train", "eval", "outcomes": lists of tuples}."""
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline() as p:
            out = p | beam.Create(rows) | aggregate.AggregateLogs(cfg, catalogue)
            for name in ("train", "eval", "outcomes"):
                _ = (out[name] | f"Json{name}" >> beam.Map(json.dumps)
                     | f"Write{name}" >> beam.io.WriteToText(os.path.join(tmp, name)))
        return {name: [tuple(json.loads(line)) for path in glob.glob(os.path.join(tmp, name + "*"))
                       for line in open(path)] for name in ("train", "eval", "outcomes")}


def r(user, item, event="view"):
    return {"user": user, "item": item, "event": event}


def counts(outcomes):
    out = {}
    for reason, n, _ in outcomes:
        out[reason] = out.get(reason, 0) + n
    return out


def test_weights_and_log_scaling():
    cfg = TransformConfig(min_user_items=1, min_item_users=1, max_user_quantile=1, max_item_quantile=1,
                          eval_fraction=0, event_weights={"view": 1, "appreciate": 4, "own": 0})
    rows = [r("a", "x"), r("a", "x"), r("a", "x", "appreciate"), r("a", "y", "own"), r("b", "y")]
    got = run(rows, cfg)
    pairs = {(u, i): (w, n) for u, i, w, n in got["train"]}
    assert pairs[("a", "x")][0] == pytest.approx(math.log1p(2 * 1 + 4)) and pairs[("a", "x")][1] == 3
    assert pairs[("b", "y")][0] == pytest.approx(math.log1p(1))
    assert ("a", "y") not in pairs            # only an "own" event, weight 0
    assert counts(got["outcomes"]) == {"used": 4, "zero_weight": 1}


def test_validation_reasons_and_every_row_counted():
    cfg = TransformConfig(min_user_items=1, min_item_users=1, max_user_quantile=1, max_item_quantile=1,
                          eval_fraction=0)
    rows = [r("a", "x"), r("", "x"), r("a", None), r("a", "x", "like"), r("a", "zz"), r(7, 9.0)]
    got = run(rows, cfg, catalogue={"x", "9"})
    assert counts(got["outcomes"]) == {"used": 2, "missing_user": 1, "missing_item": 1,
                                       "unknown_event": 1, "unknown_item": 1}
    assert sorted((u, i) for u, i, _, _ in got["train"]) == [("7", "9"), ("a", "x")]
    details = [d for reason, _, d in got["outcomes"] if reason == "unknown_event"]
    assert "like" in details[0]


def test_popularity_filter_rounds_cascade():
    # u3 only reaches item k; after k is dropped as too rare (1 user), u3 falls under the minimum in round 2.
    cfg = TransformConfig(min_user_items=2, min_item_users=2, max_user_quantile=1, max_item_quantile=1,
                          eval_fraction=0, filter_rounds=2)
    rows = [r(u, i) for u in ("u1", "u2") for i in ("i1", "i2")] + [r("u3", "i1"), r("u3", "k")]
    got = run(rows, cfg)
    assert sorted((u, i) for u, i, _, _ in got["train"]) == [
        ("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2")]
    assert counts(got["outcomes"]) == {"used": 4, "item_too_rare": 1, "user_too_rare": 1}


def test_most_popular_items_and_most_active_users_removed():
    # 10 users; item "hit" seen by all, the rest by 2 each. The 0.8 quantile drops "hit".
    cfg = TransformConfig(min_user_items=1, min_item_users=1, max_user_quantile=1.0, max_item_quantile=0.8,
                          eval_fraction=0, filter_rounds=1)
    rows = [r(f"u{u}", "hit") for u in range(10)] + [r(f"u{u}", f"i{u // 2}") for u in range(10)]
    got = run(rows, cfg)
    assert all(i != "hit" for _, i, _, _ in got["train"])
    assert counts(got["outcomes"]) == {"used": 10, "item_too_popular": 10}
    lo, hi = aggregate.degree_limits(Counter([1, 2, 3, 100]), 2, 0.5)
    assert (lo, hi) == (2, 2.5)


def test_histogram_quantile_equals_numpy_on_the_expanded_values():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 1000):
        values = rng.zipf(1.8, size=n).clip(max=10_000)
        for q in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0):
            assert aggregate.histogram_quantile(Counter(values.tolist()), q) == pytest.approx(np.quantile(values, q)), (n, q)


def test_split_is_seeded_and_near_the_fraction():
    cfg = TransformConfig(min_user_items=1, min_item_users=1, max_user_quantile=1, max_item_quantile=1,
                          eval_fraction=0.25)
    rows = [r(f"u{u}", f"i{i}") for u in range(40) for i in range(10)]
    a, b = run(rows, cfg), run(rows, cfg)
    assert sorted(a["eval"]) == sorted(b["eval"])
    assert 0.18 < len(a["eval"]) / len(rows) < 0.32
    assert {(u, i) for u, i, _, _ in a["eval"]}.isdisjoint({(u, i) for u, i, _, _ in a["train"]})
