"""The Beam log transform on small pipelines with answers computed by hand."""

import dataclasses
import glob
import json
import math
import os
import tempfile
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from collabfeat import examples
from collabfeat.config import TransformConfig
from tests import fresh
from transform import aggregate


def batches(rows, size=97):
    """Rows (dicts with user, item, event) -> record batches of up to `size` consecutive rows whose
    values have the same types (a column of ints, of strings, ...), as the logs' columns come."""
    out, run = [], []

    def kinds(row):
        return tuple(type(row[k]) for k in ("user", "item", "event"))

    for row in rows:
        if run and (kinds(row) != kinds(run[-1]) or len(run) >= size):
            out.append(pa.RecordBatch.from_pylist(run))
            run = []
        run.append(row)
    return out + ([pa.RecordBatch.from_pylist(run)] if run else [])


def run_once(rows, cfg, catalogue=None):
    """Runs AggregateLogs; -> {"train", "eval": (user, item, weight, rows) tuples read back from the
    tf.Examples written, "outcomes": tuples, "summary": dict}."""
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        with beam.Pipeline() as p:
            out = p | beam.Create(batches(rows)) | aggregate.AggregateLogs(cfg, work, len(rows), catalogue)
            for name in ("files", "outcomes", "summary"):
                _ = (
                    out[name]
                    | f"Json{name}" >> beam.Map(json.dumps)
                    | f"Write{name}" >> beam.io.WriteToText(os.path.join(tmp, name))
                )
        got = {
            name: [json.loads(line) for path in glob.glob(os.path.join(tmp, name + "-*")) for line in open(path)]
            for name in ("files", "outcomes", "summary")
        }
        for name in ("train", "eval"):
            files = [path for split, path, _ in got["files"] if split == name]
            records = [examples.to_dict(r.numpy()) for r in tf.data.TFRecordDataset(files, "GZIP")]
            assert len(records) == sum(n for split, _, n in got["files"] if split == name)
            got[name] = [(d["user_id"].decode(), d["item_id"].decode(), d["weight"], d["events"]) for d in records]
    [got["summary"]] = got["summary"]
    got["outcomes"] = [tuple(x) for x in got["outcomes"]]
    return got


def tally(outcomes):
    """Outcomes as {reason: rows} and {reason: the smallest details} (what WriteOutcomes keeps)."""
    details = {}
    for reason, _, d in outcomes:
        if d:
            details.setdefault(reason, []).append(d)
    return counts(outcomes), {k: sorted(v)[:5] for k, v in details.items()}


def run(rows, cfg, catalogue=None):
    """AggregateLogs with one hash bucket of users and with several: the same pairs, outcomes and summary."""
    one = run_once(rows, dataclasses.replace(cfg, bucket_rows=max(1, len(rows))), catalogue)
    several = run_once(rows, dataclasses.replace(cfg, bucket_rows=max(1, len(rows) // 5)), catalogue)
    for name in ("train", "eval"):
        assert sorted(one[name]) == sorted(several[name]), name
    assert tally(one["outcomes"]) == tally(several["outcomes"]) and one["summary"] == several["summary"]
    return one


def r(user, item, event="view"):
    return {"user": user, "item": item, "event": event}


def counts(outcomes):
    out = {}
    for reason, n, _ in outcomes:
        out[reason] = out.get(reason, 0) + n
    return out


def test_weights_and_log_scaling():
    cfg = TransformConfig(
        min_user_items=1,
        min_item_users=1,
        max_user_quantile=1,
        max_item_quantile=1,
        eval_fraction=0,
        event_weights={"view": 1, "appreciate": 4, "own": 0},
    )
    rows = [r("a", "x"), r("a", "x"), r("a", "x", "appreciate"), r("a", "y", "own"), r("b", "y")]
    got = run(rows, cfg)
    pairs = {(u, i): (w, n) for u, i, w, n in got["train"]}
    assert pairs[("a", "x")][0] == pytest.approx(math.log1p(2 * 1 + 4)) and pairs[("a", "x")][1] == 3
    assert pairs[("b", "y")][0] == pytest.approx(math.log1p(1))
    assert ("a", "y") not in pairs  # only an "own" event, weight 0
    assert counts(got["outcomes"]) == {"used": 4, "zero_weight": 1}


def test_validation_reasons_and_every_row_counted():
    cfg = TransformConfig(min_user_items=1, min_item_users=1, max_user_quantile=1, max_item_quantile=1, eval_fraction=0)
    rows = [r("a", "x"), r("", "x"), r("a", None), r("a", "x", "like"), r("a", "zz"), r(7, 9.0)]
    got = run(rows, cfg, catalogue={"x", "9"})
    assert counts(got["outcomes"]) == {
        "used": 2,
        "missing_user": 1,
        "missing_item": 1,
        "unknown_event": 1,
        "unknown_item": 1,
    }
    assert sorted((u, i) for u, i, _, _ in got["train"]) == [("7", "9"), ("a", "x")]
    details = [d for reason, _, d in got["outcomes"] if reason == "unknown_event" and d]
    assert "like" in details[0]


def test_popularity_filter_rounds_cascade():
    # u3 only reaches item k; after k is dropped as too rare (1 user), u3 falls under the minimum in round 2.
    cfg = TransformConfig(
        min_user_items=2, min_item_users=2, max_user_quantile=1, max_item_quantile=1, eval_fraction=0, filter_rounds=2
    )
    rows = [r(u, i) for u in ("u1", "u2") for i in ("i1", "i2")] + [r("u3", "i1"), r("u3", "k")]
    got = run(rows, cfg)
    assert sorted((u, i) for u, i, _, _ in got["train"]) == [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2")]
    assert counts(got["outcomes"]) == {"used": 4, "item_too_rare": 1, "user_too_rare": 1}


def test_most_popular_items_and_most_active_users_removed():
    # 10 users; item "hit" seen by all, the rest by 2 each. The 0.8 quantile drops "hit".
    cfg = TransformConfig(
        min_user_items=1,
        min_item_users=1,
        max_user_quantile=1.0,
        max_item_quantile=0.8,
        eval_fraction=0,
        filter_rounds=1,
    )
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
            assert aggregate.histogram_quantile(Counter(values.tolist()), q) == pytest.approx(np.quantile(values, q)), (
                n,
                q,
            )


@pytest.mark.slow
def test_split_is_seeded_and_near_the_fraction():
    cfg = TransformConfig(
        min_user_items=1, min_item_users=1, max_user_quantile=1, max_item_quantile=1, eval_fraction=0.25
    )
    rows = [r(f"u{u}", f"i{i}") for u in range(40) for i in range(10)]
    a, b = run_once(rows, cfg), run_once(rows, cfg)
    assert sorted(a["eval"]) == sorted(b["eval"])
    assert 0.18 < len(a["eval"]) / len(rows) < 0.32
    assert {(u, i) for u, i, _, _ in a["eval"]}.isdisjoint({(u, i) for u, i, _, _ in a["train"]})


def reference(rows, cfg, catalogue=None):
    """The log transform in plain Python, all in memory: {"train", "eval": sorted pairs, "counts"}."""
    outcomes, events = Counter(), {}
    for row in rows:
        status, value = aggregate.validate_row(row, cfg.event_weights, catalogue)
        if status != "ok":
            outcomes[status] += 1
            continue
        user, item, event = value
        events.setdefault((user, item), Counter())[event] += 1
    pairs = []
    for (user, item), c in events.items():
        w = math.log1p(sum(cfg.event_weights[e] * n for e, n in c.items()))
        if w > 0:
            pairs.append((user, item, w, sum(c.values())))
        else:
            outcomes["zero_weight"] += sum(c.values())
    for _ in range(max(1, cfg.filter_rounds)):
        users, items = Counter(p[0] for p in pairs), Counter(p[1] for p in pairs)
        u_hi = np.quantile(list(users.values()), cfg.max_user_quantile) if cfg.max_user_quantile < 1 else math.inf
        i_hi = np.quantile(list(items.values()), cfg.max_item_quantile) if cfg.max_item_quantile < 1 else math.inf
        kept = []
        for p in pairs:
            u, i = users[p[0]], items[p[1]]
            reason = (
                "user_too_rare"
                if u < cfg.min_user_items
                else "user_too_active"
                if u > u_hi
                else "item_too_rare"
                if i < cfg.min_item_users
                else "item_too_popular"
                if i > i_hi
                else None
            )
            if reason:
                outcomes[reason] += p[3]
            else:
                kept.append(p)
        pairs = kept
    outcomes["used"] = sum(p[3] for p in pairs)
    held = [p for p in pairs if aggregate.in_eval_split(p[0], p[1], cfg.eval_fraction, cfg.split_seed)]
    return {
        "train": sorted(set(pairs) - set(held)),
        "eval": sorted(held),
        "counts": {k: v for k, v in outcomes.items() if v},
        "summary": {
            "pairs": {"train": len(pairs) - len(held), "eval": len(held)},
            "users": len({p[0] for p in pairs}),
            "items": len({p[1] for p in pairs}),
        },
    }


@pytest.mark.slow
def test_bucketed_transform_equals_a_plain_python_computation():
    """Skewed random logs, 3 filter rounds with both popularity cuts active, a catalogue and bad rows:
    one bucket and several give exactly what the all-in-memory computation gives."""
    rng = np.random.default_rng(3)
    cfg = TransformConfig(
        min_user_items=3,
        min_item_users=3,
        max_user_quantile=0.97,
        max_item_quantile=0.95,
        eval_fraction=0.2,
        filter_rounds=3,
    )
    users = rng.zipf(1.6, 4000) % 300
    items = rng.zipf(1.4, 4000) % 150
    evts = rng.choice(["view", "view", "view", "appreciate", "comment", "own", "like"], 4000)
    rows = [r(f"u{u}", f"i{i}", e) for u, i, e in zip(users, items, evts)] + [r("", "i1"), r("u1", None)]
    catalogue = {f"i{i}" for i in range(140)}
    got, want = run(rows, cfg, catalogue), reference(rows, cfg, catalogue)
    assert counts(got["outcomes"]) == want["counts"]
    assert {
        "user_too_rare",
        "user_too_active",
        "item_too_rare",
        "item_too_popular",
        "zero_weight",
        "unknown_item",
        "unknown_event",
    } <= set(want["counts"])
    for name in ("train", "eval"):
        g = sorted(got[name])
        assert [p[:2] + p[3:] for p in g] == [p[:2] + p[3:] for p in want[name]]
        assert np.allclose([p[2] for p in g], [p[2] for p in want[name]], rtol=1e-7, atol=0)  # float32, as stored
    assert got["summary"] == want["summary"]


PEAK = """
import sys, tracemalloc
sys.path.insert(0, {repo!r})
import apache_beam as beam, pyarrow as pa, tensorflow as tf
from collabfeat import examples
from collabfeat.config import TransformConfig
from transform import aggregate
aggregate.BATCH_ROWS = 4096
n, tmp = {n}, {tmp!r}
with tf.io.TFRecordWriter(tmp + "/logs.gz", "GZIP") as w:
    for i in range(n):      # every row a pair of its own: nothing is combined away
        w.write(examples.make({{"user": f"user{{i % 997}}", "item": f"item{{i % 5003}}", "event": "view"}}))
cfg = TransformConfig(min_user_items=1, min_item_users=1, max_user_quantile=1, max_item_quantile=1,
                      bucket_rows=2000, filter_rounds=2)
tracemalloc.start()
with beam.Pipeline() as p:
    out = (p | beam.Create([(0, tmp + "/logs.gz")])
           | beam.FlatMap(aggregate.log_batches, {{"user": "user", "item": "item", "event": "event"}})
           | aggregate.AggregateLogs(cfg, tmp + "/work", n))
    _ = out["files"] | beam.Map(lambda f: f[2]) | beam.CombineGlobally(sum) | beam.io.WriteToText(tmp + "/count")
assert int(open(tmp + "/count-00000-of-00001").read()) == n  # every row written, as a pair of its own
print(tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory())
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_pairs(tmp_path):
    """Peak memory (Python's, by tracemalloc, plus Arrow's pool; a fresh interpreter: Beam's in-memory
    runner runs its workers and holds its shuffles there) at 10,000 and 80,000 rows, every one its own
    pair, in buckets of 2,000 rows and batches of 4,096."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    peaks = []
    for n in (10_000, 80_000):
        tmp = tmp_path / f"n{n}"
        (tmp / "work").mkdir(parents=True)
        peaks.append(fresh.last_number(PEAK.format(repo=repo, n=n, tmp=str(tmp))))
    assert peaks[1] < 1.2 * peaks[0], json.dumps(peaks)


def test_a_batch_is_validated_as_each_of_its_rows_would_be():
    """validate_batch against validate_row, row by row, on values that need care: whitespace Python
    strips (\\x1c, \\u3000, \\xa0), bad UTF-8, integral and other floats, ints, nulls, case, quotes."""
    weights = {"view": 1.0, "appreciate": 4.0}
    names = sorted(weights)
    users = ["a", " b\u3000", "\x1c", None, "", "é", "it's", "back\\slash", "\u2028x"]
    items = ["x", "y ", "\xa0", None, "z", "caf\u00e9", '"q"', "x", "x"]
    events = ["view", " VIEW ", "Appreciate", "like", None, "vİew", "appreciate\n", "view", "view"]
    catalogue = {"x", "y", "café", '"q"'}
    columns, fields = [users, items, events], ["user", "item", "event"]
    batches_of = [pa.RecordBatch.from_arrays([pa.array(c) for c in columns], fields)]
    encoded = [[None if v is None else v.encode() for v in c] for c in columns]
    encoded[0][0] = b"\xff\xfea"  # not UTF-8
    batches_of.append(pa.RecordBatch.from_arrays([pa.array(c, pa.binary()) for c in encoded], fields))
    as_lists = [pa.array([[v] if v is not None else [] for v in c], pa.list_(pa.binary())) for c in encoded]
    batches_of.append(pa.RecordBatch.from_arrays(as_lists, fields))  # as tf.Examples decode
    numbers = [[7, 8, None], [9.0, 9.5, 1e20], ["view", "view", "view"]]
    batches_of.append(pa.RecordBatch.from_arrays([pa.array(c) for c in numbers], fields))
    for batch in batches_of:
        rows = batch.to_pylist()
        rows = [{k: (v[0] if v else None) if isinstance(v, list) else v for k, v in row.items()} for row in rows]
        want = [aggregate.validate_row(row, weights, catalogue | {"9", "100000000000000000000"}) for row in rows]
        table, tally = aggregate.validate_batch(batch, names, catalogue | {"9", "100000000000000000000"})
        ok = [v for status, v in want if status == "ok"]
        assert [
            (u, i, names[e]) for u, i, e in zip(*(table.column(c).to_pylist() for c in ("user", "item", "event")))
        ] == ok
        rejected = Counter(status for status, _ in want if status != "ok")
        assert dict(tally.rows) == dict(rejected)
        details = {}  # what the row-by-row transform wrote: the values as repr() writes them, the smallest 5
        for row, (status, _) in zip(rows, want):
            if status != "ok":
                shown = ", ".join(f"{k}={aggregate._text(row.get(k))!r}" for k in fields)
                details.setdefault(status, []).append(f"row {shown}")
        assert tally.details == {k: sorted(v)[:5] for k, v in details.items()}


def test_the_bucket_hash_is_stable_and_spreads():
    users = pa.array([f"user{i}" for i in range(20000)] + ["", "é", "a" * 300])
    b = aggregate.bucket_of(users, 16)
    assert np.array_equal(b, aggregate.bucket_of(users.slice(0), 16))
    assert np.array_equal(b[5:100], aggregate.bucket_of(users.slice(5, 95), 16))  # a slice hashes the same
    assert np.array_equal(b[[3, 3]], aggregate.bucket_of(pa.array(["user3", "user3"]), 16))
    assert np.bincount(b[:20000], minlength=16).min() > 20000 / 16 * 0.9  # near uniform
    assert aggregate.bucket_of(pa.array(["ab"]), 1 << 30)[0] != aggregate.bucket_of(pa.array(["ba"]), 1 << 30)[0]


def test_a_split_with_no_pairs_is_one_empty_file_readers_can_open(tmp_path):
    """eval_fraction 0 leaves the eval split empty: it still holds a file (TFX's readers need one)."""
    part = str(tmp_path / "part.gz")
    assert examples.write_records(part, [examples.make({"user_id": "u", "item_id": "i"})]) == 1
    assert examples.move_parts([(part, 1)], str(tmp_path / "Split-train")) == 1
    assert examples.move_parts([], str(tmp_path / "Split-eval")) == 0
    files = sorted(p.name for p in (tmp_path / "Split-eval").iterdir())
    assert files == ["data_tfrecord-00000-of-00001.gz"]
    assert list(tf.data.TFRecordDataset(str(tmp_path / "Split-eval" / files[0]), "GZIP")) == []
    assert examples.count_records(str(tmp_path / "Split-train")) == 1 and not os.path.exists(part)


def test_pairs_are_grouped_in_the_order_of_their_first_row():
    """group_pairs against a dict built row by row: every pair once, in the order its first row
    came (seq, not the table's order), with its rows counted per event; no rows, no pairs."""
    rng = np.random.default_rng(3)
    n = 5000
    user = [f"u{k}" for k in rng.integers(0, 40, n)]
    item = [f"i{k}" for k in rng.integers(0, 70, n)]
    event = rng.integers(0, 3, n).astype(np.int8)
    seq = rng.permutation(n).astype(np.int64) * 7
    rows = pa.table({"user": user, "item": item, "event": event, "seq": seq})
    first, counts = {}, {}
    for u, i, e, s in zip(user, item, event, seq):
        first[(u, i)] = min(first.get((u, i), s), s)
        counts.setdefault((u, i), [0, 0, 0])[e] += 1
    pairs, per_event = aggregate.group_pairs(rows, 3)
    got = list(zip(pairs.column("user").to_pylist(), pairs.column("item").to_pylist()))
    assert got == sorted(first, key=first.get)
    assert per_event.tolist() == [counts[p] for p in got]
    empty, none = aggregate.group_pairs(rows.slice(0, 0), 3)
    assert empty.num_rows == 0 and none.shape == (0, 3)


def test_column_batches_read_what_tf_data_parses_and_refuse_what_it_refuses(tmp_path):
    """column_batches (tfx_bsl's decoder) against batches (tf.data's parse_example) on a split of two
    files: the same records (in file order), a default for a missing feature, and a clear error for a
    missing feature without one, two values in a record, or a value of the wrong kind."""
    split = tmp_path / "Split-train"
    split.mkdir()
    rng = np.random.default_rng(2)
    recs = [
        {"user_idx": int(u), "item_idx": int(i), "rating": float(r), **({"tag": f"t{u}"} if u % 3 else {})}
        for u, i, r in zip(rng.integers(0, 50, 900), rng.integers(0, 2**40, 900), rng.random(900))
    ]
    examples.write_records(str(split / "a.gz"), [examples.make(r) for r in recs[:400]])
    examples.write_records(str(split / "b.gz"), [examples.make(r) for r in recs[400:]])
    spec = {"user_idx": tf.int64, "item_idx": tf.int64, "rating": tf.float32, "tag": (tf.string, b"-")}

    def rows(batches):
        return sorted(zip(*(np.concatenate([b[k] for b in batches]).tolist() for k in spec)))

    got = list(examples.column_batches(str(tmp_path), "train", spec, batch_size=128))
    assert rows(got) == rows(list(examples.batches(str(tmp_path), "train", spec, 128)))
    assert [b["user_idx"].dtype for b in got[:1]] == [np.int64] and got[0]["rating"].dtype == np.float32
    assert np.concatenate([b["item_idx"] for b in got]).tolist() == [r["item_idx"] for r in recs]  # file order

    def error(records, spec):
        bad = tmp_path / "bad"
        (bad / "Split-train").mkdir(parents=True, exist_ok=True)
        examples.write_records(str(bad / "Split-train" / "c.gz"), records)
        with pytest.raises(ValueError) as e:
            list(examples.column_batches(str(bad), "train", spec))
        return str(e.value)

    assert "lack feature 'tag'" in error([examples.make(r) for r in recs], {"tag": tf.string})
    two = tf.train.Example(
        features=tf.train.Features(feature={"user_idx": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2]))})
    ).SerializeToString()
    assert "2 values of feature 'user_idx'" in error([two], {"user_idx": tf.int64})
    assert "feature 'rating' holds float" in error([examples.make(r) for r in recs[:5]], {"rating": tf.int64})
