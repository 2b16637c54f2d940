"""The Beam log transform: behaviour rows -> one weighted (user, item) pair each.

    V_ij = log1p( sum_e w_e * n_ije )      n_ije: events of type e by user i on item j

Then the least and most popular users and items are removed, for `filter_rounds`
rounds (removing an item can push a user under the minimum), and each user's
pairs are split into train and eval by a seeded hash.

Every input row ends with exactly one outcome (collabfeat/outcomes.py), counted in the report:
  used, or a reason: missing_user, missing_item, unknown_event, unknown_item,
  zero_weight, user_too_rare, user_too_active, item_too_rare, item_too_popular.

Columns, not rows: the rows travel as Arrow record batches and no stage makes a Python call per
row. A batch is validated with pyarrow's compute functions (the rule is `validate_row`; the few
distinct event names go through it as they are), its valid rows are hashed to buckets of users
with numpy, each bucket is aggregated with Arrow's group-by, and the filter rounds, the split and
the tf.Example encoding (tfx_bsl's C++ encoder) work on a bucket's pairs as columns. Only rejected
rows' details and the eval split's hash are computed per pair in Python.

Bounded memory. No shuffle carries the rows or the pairs: a runner that holds a shuffle's input
in memory (Beam's DirectRunner and its portable job service do) would hold the whole log. The
valid rows are spilled to hash buckets of users as Arrow IPC streams under `work_dir`, each bundle
writing its own file per bucket; then each bucket is aggregated on its own (its users' pairs are
all in it), every filter round reads a bucket's pairs from its file and writes what it keeps to the
next, and the last round writes the train and eval pairs as gzipped TFRecord files. What crosses a
shuffle is small: file names, per-bucket degree histograms, per-bucket item counts (a column each)
and the outcome counts. A worker holds one bucket at a time: about `bucket_rows` rows' pairs
(transform.bucket_rows): AggregateLogs(rows=...) makes rows / bucket_rows buckets.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import resource
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from tfx_bsl.coders import example_coder

from collabfeat import examples, outcomes, storage
from collabfeat.config import Config
from collabfeat.outcomes import EXAMPLES, USED

REASONS = (
    "missing_user",
    "missing_item",
    "unknown_event",
    "unknown_item",
    "zero_weight",
    "user_too_rare",
    "user_too_active",
    "item_too_rare",
    "item_too_popular",
)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def validate_row(row: dict[str, Any], event_weights: dict[str, float], catalogue: set | None) -> tuple[str, Any]:
    """-> ("ok", (user, item, event)) or (reason, None). validate_batch applies this rule to a batch."""
    user, item, event = _text(row.get("user")), _text(row.get("item")), _text(row.get("event")).lower()
    if not user:
        return "missing_user", None
    if not item:
        return "missing_item", None
    if event not in event_weights:
        return "unknown_event", None
    if catalogue is not None and item not in catalogue:
        return "unknown_item", None
    return "ok", (user, item, event)


def pair_weight(event_counts: dict[str, int], event_weights: dict[str, float]) -> float:
    return math.log1p(sum(event_weights[e] * n for e, n in sorted(event_counts.items())))


def in_eval_split(user: str, item: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}\x1f{user}\x1f{item}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def bucket_count(rows: int, cfg) -> int:
    """Hash buckets of users for about `rows` log rows: about cfg.bucket_rows rows each."""
    return max(1, math.ceil(rows / cfg.bucket_rows))


# --- columns ----------------------------------------------------------------------------------

BATCH_ROWS = 1 << 16  # log rows decoded and validated at a time
WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())  # what str.strip() strips
_PLAIN = r"^[ !\"#-&(-\[\]-~]*$"  # printable ASCII without ' and \\: repr() only adds quotes around it


def _first(column: pa.Array) -> pa.Array:
    """A tf.Example feature's column (a list a row) -> its first value a row, null where the list is
    empty or absent; a column of plain values as it is."""
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return column
    offsets = column.offsets.to_numpy()
    empty = (np.diff(offsets) == 0) | column.is_null().to_numpy(zero_copy_only=False)
    return column.values.take(pa.array(np.where(empty, 0, offsets[:-1]), mask=empty))


def text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`_text` over a column: strings stripped as str.strip() strips them, null where there is no
    value. Bytes are read as UTF-8 (bad bytes replaced), integral floats written as integers."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = _first(column)
    kind = column.type
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        try:
            column = column.cast(pa.string())
        except pa.ArrowInvalid:  # not UTF-8 throughout
            column = pa.array([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()])
    elif pa.types.is_integer(kind) or pa.types.is_large_string(kind):
        column = column.cast(pa.string())
    elif not pa.types.is_string(kind):  # floats and the rest: Python's own rule
        column = pa.array([None if v is None else _text(v) for v in column.to_pylist()], pa.string())
    return pc.utf8_trim(column, characters=WHITESPACE)


def reprs(strings: pa.Array) -> pa.Array:
    """repr() of each string: by pyarrow for printable ASCII without quotes or backslashes, else by Python."""
    strings = pc.fill_null(strings, "")
    plain = pc.match_substring_regex(strings, _PLAIN).to_numpy(zero_copy_only=False)
    quoted = pc.binary_join_element_wise("'", strings, "'", "")
    if plain.all():
        return quoted
    odd = np.flatnonzero(~plain)
    fixed = pa.array([repr(v) for v in strings.take(pa.array(odd)).to_pylist()], pa.string())
    out = quoted.to_numpy(zero_copy_only=False).astype(object)
    out[odd] = fixed.to_numpy(zero_copy_only=False)
    return pa.array(out, pa.string())


def bucket_of(users: pa.Array, buckets: int) -> np.ndarray:
    """Each user's hash bucket, the same in every process and for every batching: a polynomial
    hash of the UTF-8 bytes mod 2^64, mixed by splitmix64's finaliser, mod `buckets`."""
    users = pc.fill_null(users, "").cast(pa.string())
    if len(users) == 0:
        return np.zeros(0, np.int64)
    _, offsets_buf, data_buf = users.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[users.offset : users.offset + len(users) + 1].astype(np.int64)
    lengths = np.diff(offsets)
    data = np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]] if data_buf else np.zeros(0, np.uint8)
    pos = np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    powers = np.cumprod(np.full(max(1, int(lengths.max(initial=0))), 0x100000001B3, np.uint64), dtype=np.uint64)
    terms = np.append(data.astype(np.uint64) * powers[pos], np.uint64(0))
    with np.errstate(over="ignore"):
        h = np.add.reduceat(terms, offsets[:-1] - offsets[0]) * (lengths > 0) + lengths.astype(np.uint64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h % np.uint64(buckets)).astype(np.int64)


def _per_distinct(values: pa.Array, f, dtype) -> np.ndarray:
    """f(value) for each value, called once per distinct value (a Python rule over few of them)."""
    distinct = pc.unique(values)
    out = np.array([f(v) for v in distinct.to_pylist()], dtype)
    return out[pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False)]


def _codes(events: pa.Array, names: list[str]) -> np.ndarray:
    """Each event's index in `names` by validate_row's rule (applied to the distinct values), -1 for none."""
    index = {name: k for k, name in enumerate(names)}
    return _per_distinct(events, lambda v: index.get(_text(v).lower(), -1), np.int8)


def _known(items: pa.Array, catalogue) -> np.ndarray:
    """Whether each item is in the catalogue (a set or dict), looked up once per distinct item."""
    return _per_distinct(items, lambda v: v in catalogue, bool)


def validate_batch(batch, names: list[str], catalogue=None) -> tuple[pa.Table, _Tally]:
    """A record batch (columns user, item, event, of any type or a list a row; and seq, the rows'
    place in the logs, if it has one) -> the valid rows as a table (user, item: strings; event: its
    index in `names`, int8; seq), and the rejected rows tallied with their details. The rule is
    validate_row's, for every row."""
    user, item, event = (text(batch.column(name)) for name in ("user", "item", "event"))
    codes = _codes(event, names)
    missing_user = pc.fill_null(pc.equal(user, ""), True).to_numpy(zero_copy_only=False)
    missing_item = pc.fill_null(pc.equal(item, ""), True).to_numpy(zero_copy_only=False)
    reason = np.where(missing_user, 1, np.where(missing_item, 2, np.where(codes < 0, 3, 0)))
    if catalogue is not None:
        reason = np.where((reason == 0) & ~_known(item, catalogue), 4, reason)
    tally = _Tally()
    for code in np.unique(reason[reason > 0]):
        rows = pa.array(np.flatnonzero(reason == code))
        details = pc.binary_join_element_wise(
            "row user=",
            reprs(user.take(rows)),
            ", item=",
            reprs(item.take(rows)),
            ", event=",
            reprs(event.take(rows)),
            "",
        )
        tally.add_all(REASONS[code - 1], len(rows), details)
    keep = pa.array(reason == 0)
    table = pa.table({"user": user.filter(keep), "item": item.filter(keep), "event": pa.array(codes).filter(keep)})
    if "seq" in batch.schema.names:  # the rows' place in the logs, which fixes the order of the pairs
        table = table.append_column("seq", batch.column("seq").filter(keep))
    return table, tally


# --- bucket files: Arrow IPC streams, through Beam's filesystems (local, gs://, ...) -----------


def _write_table(path: str, table: pa.Table) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        with pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table, max_chunksize=BATCH_ROWS)


def _read_tables(paths: list[str]) -> pa.Table:
    tables = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            tables.append(pa.ipc.open_stream(f).read_all())
    return pa.concat_tables(tables).combine_chunks()


class _Tally:
    """Outcomes as few tuples: rows per outcome, and the EXAMPLES smallest details per reason
    (WriteOutcomes keeps the smallest EXAMPLES of all, so the result is the same as for one tuple
    per row)."""

    def __init__(self):
        self.rows: Counter = Counter()
        self.details: dict[str, list[str]] = {}

    def add(self, reason: str, rows: int, detail: str | None = None) -> None:
        self.rows[reason] += rows
        if detail is not None:
            kept = self.details.setdefault(reason, [])
            if len(kept) < EXAMPLES or detail < kept[-1]:
                bisect.insort(kept, detail)
                del kept[EXAMPLES:]

    def add_all(self, reason: str, rows: int, details: pa.Array) -> None:
        """`rows` rows with this outcome; their details, of which the smallest are kept."""
        self.rows[reason] += rows
        for detail in pc.array_take(details, pc.array_sort_indices(details)[:EXAMPLES]).to_pylist():
            self.add(reason, 0, detail)

    def merge(self, other: _Tally) -> None:
        self.rows.update(other.rows)
        for reason, details in other.details.items():
            for d in details:
                self.add(reason, 0, d)

    def tuples(self) -> Iterator[tuple]:
        """(outcome, rows, None) per outcome, and (reason, 0, detail) per example kept."""
        for reason, n in self.rows.items():
            yield reason, n, None
        for reason, details in self.details.items():
            for d in details:
                yield reason, 0, d

    def outputs(self, windowed: bool = False) -> Iterator[beam.pvalue.TaggedOutput]:
        for t in self.tuples():
            yield beam.pvalue.TaggedOutput("outcomes", GlobalWindows.windowed_value(t) if windowed else t)


class _Spill(beam.DoFn):
    """Record batches of log rows -> validated; each bundle's valid rows appended to an Arrow IPC
    stream of its own per bucket of users, and at the bundle's end (bucket, path) for every file it
    wrote and its rejected rows' tally. Only the paths emitted are read later, so a bundle that
    fails and is retried leaves nothing behind that counts twice."""

    def __init__(self, directory: str, event_weights: dict[str, float], buckets: int):
        self.directory, self.names, self.buckets = directory, sorted(event_weights), buckets

    def setup(self):
        """A bundle keeps a file open per bucket: let the worker open that many, and some."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.buckets + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    def start_bundle(self):
        self.files: dict[int, tuple] = {}
        self.tally = _Tally()
        self.tag = uuid.uuid4().hex

    def process(self, batch, known=None):
        table, tally = validate_batch(batch, self.names, known)
        self.tally.merge(tally)
        if not table.num_rows:
            return
        bucket = bucket_of(table.column("user").combine_chunks(), self.buckets)
        order = np.argsort(bucket, kind="stable")
        table, bucket = table.take(pa.array(order)), bucket[order]
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(bucket)]):
            self._writer(int(bucket[start]), table.schema).write_table(table.slice(start, end - start))

    def _writer(self, bucket: int, schema: pa.Schema):
        if bucket not in self.files:
            path = FileSystems.join(self.directory, f"rows-{bucket:05d}-{self.tag}.arrow")
            f = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
            self.files[bucket] = (path, f, pa.ipc.new_stream(f, schema))
        return self.files[bucket][2]

    def finish_bundle(self):
        for bucket, (path, f, writer) in self.files.items():
            writer.close()
            f.close()
            yield GlobalWindows.windowed_value((bucket, path))
        yield from self.tally.outputs(windowed=True)


def _stats(pairs: pa.Table, path: str) -> Iterator[Any]:
    """What the next filter round's limits need from a bucket: its users' degree histogram (a
    bucket holds all of its users' pairs) and each item's number of users in it, written to `path`
    (an item-sized table goes to a file, not through the runner): ("item_users", path)."""
    degrees = pc.value_counts(pairs.column("user")).field("counts").to_numpy(zero_copy_only=False)
    values, n = np.unique(degrees, return_counts=True)
    yield beam.pvalue.TaggedOutput("user_histogram", dict(zip(values.tolist(), n.tolist())))
    per_item = pc.value_counts(pairs.column("item"))
    _write_table(path, pa.table({"item": per_item.field("values"), "n": per_item.field("counts")}))
    yield beam.pvalue.TaggedOutput("item_users", path)


def item_degrees(paths: list[str]) -> pa.Table:
    """Files of (item, n), a bucket's each -> one table (item, n) summed per item."""
    if not paths:
        return pa.table({"item": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    table = _read_tables(sorted(paths))
    items = pc.dictionary_encode(table.column("item").combine_chunks())
    n = np.bincount(  # float64 sums: exact below 2^53
        items.indices.to_numpy(zero_copy_only=False), table.column("n").to_numpy(), len(items.dictionary)
    )
    return pa.table({"item": items.dictionary, "n": n.astype(np.int64)})


def _details(pairs: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(
        "user ",
        reprs(pairs.column("user").combine_chunks()),
        ", item ",
        reprs(pairs.column("item").combine_chunks()),
        "",
    )


def group_pairs(rows: pa.Table, n_events: int) -> tuple[pa.Table, np.ndarray]:
    """Rows (user, item, event: a code below n_events, seq) -> the distinct (user, item) pairs in the
    order of their first row (least seq), and each pair's rows per event [pairs, n_events]. Sorted and
    counted with numpy: Arrow's hash group-by held on to hundreds of MB a bucket in its threads' heaps."""
    if rows.num_rows == 0:
        return rows.select(["user", "item"]), np.zeros((0, n_events), np.int64)
    users = pc.dictionary_encode(rows.column("user").combine_chunks())
    items = pc.dictionary_encode(rows.column("item").combine_chunks())
    u, i = users.indices.to_numpy(zero_copy_only=False), items.indices.to_numpy(zero_copy_only=False)
    key = u.astype(np.int64) * len(items.dictionary) + i
    order = np.argsort(key, kind="stable")
    key = key[order]
    new_pair = np.r_[True, key[1:] != key[:-1]]
    starts, group = np.flatnonzero(new_pair), np.cumsum(new_pair) - 1  # group: each sorted row's pair
    del key, new_pair
    events = rows.column("event").to_numpy().astype(np.int64)[order]
    counts = np.bincount(group * n_events + events, minlength=len(starts) * n_events).reshape(-1, n_events)
    del group, events
    seq = rows.column("seq").to_numpy() if "seq" in rows.schema.names else np.arange(rows.num_rows)
    by_first = np.argsort(np.minimum.reduceat(seq[order], starts), kind="stable")
    at = order[starts][by_first]  # a row of each pair: its user and item
    pairs = pa.table({"user": users.dictionary.take(pa.array(u[at])), "item": items.dictionary.take(pa.array(i[at]))})
    return pairs, counts[by_first]


class _Aggregate(beam.DoFn):
    """(bucket, [row files]) -> the bucket's weighted pairs (user, item, weight, rows) in a file,
    (bucket, that path), zero-weight outcomes and the first round's statistics."""

    def __init__(self, directory: str, event_weights: dict[str, float]):
        self.directory, self.weights = directory, dict(event_weights)

    def process(self, kv):
        bucket, paths = kv
        names = sorted(self.weights)
        grouped, per_event = group_pairs(_read_tables(list(paths)), len(names))
        counts = [per_event[:, k] for k in range(len(names))]
        total = 0.0
        for k, name in enumerate(names):  # the sum pair_weight makes: sorted events, exactly
            total = total + self.weights[name] * counts[k].astype(np.float64)
        weight, n = np.log1p(total), per_event.sum(axis=1)
        pairs = grouped.append_column("weight", pa.array(weight)).append_column("rows", pa.array(n))
        zero = weight <= 0
        tally = _Tally()
        if zero.any():
            dropped = pairs.filter(pa.array(zero))
            details = _details(dropped)
            tally.rows["zero_weight"] += int(n[zero].sum())
            zero_counts = [c[zero] for c in counts]
            for row in pc.array_sort_indices(details)[:EXAMPLES].to_pylist():
                by_event = {name: int(zero_counts[k][row]) for k, name in enumerate(names) if zero_counts[k][row]}
                tally.add("zero_weight", 0, f"{details[row].as_py()}: {by_event}")
            pairs = pairs.filter(pa.array(~zero))
        path = FileSystems.join(self.directory, f"pairs-round0-{bucket:05d}.arrow")
        _write_table(path, pairs)
        yield (bucket, path)
        yield from tally.outputs()
        yield from _stats(pairs, FileSystems.join(self.directory, f"items-round0-{bucket:05d}.arrow"))


def _encode(pairs: pa.Table) -> Iterator[bytes]:
    """Pairs -> tf.Examples {user_id, item_id: bytes, weight: float, events: int}, by tfx_bsl's encoder."""

    def one_each(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), values)

    encoder = example_coder.RecordBatchToExamplesEncoder()
    for batch in pairs.to_batches(max_chunksize=8192):
        yield from encoder.encode(
            pa.RecordBatch.from_arrays(
                [
                    one_each(batch.column("user").cast(pa.binary())),
                    one_each(batch.column("item").cast(pa.binary())),
                    one_each(batch.column("weight").cast(pa.float32())),
                    one_each(batch.column("rows").cast(pa.int64())),
                ],
                ["user_id", "item_id", "weight", "events"],
            )
        )


class _FilterRound(beam.DoFn):
    """One popularity-filter round over a bucket's pairs: a pair goes when its user's degree is
    outside the user limits, or its item was found too rare or too popular in this round. The kept
    pairs go to the next round's file, or (in the last round) to a train and an eval file of
    tf.Examples: ("files", (split, path, records))."""

    def __init__(self, directory: str, round_no: int, last: bool, eval_fraction: float, seed: int):
        self.directory, self.round_no, self.last = directory, round_no, last
        self.eval_fraction, self.seed = eval_fraction, seed

    def process(self, kv, user_limits, dropped):
        bucket, path = kv
        pairs = _read_tables([path])
        users = pairs.column("user").combine_chunks().dictionary_encode()
        index = users.indices.to_numpy(zero_copy_only=False)
        degree = np.bincount(index, minlength=len(users.dictionary))[index]
        lo, hi = user_limits
        found = pc.index_in(pairs.column("item"), value_set=dropped.column("item"))
        why = np.append(dropped.column("reason").to_numpy(zero_copy_only=False).astype(object), "")
        item_reason = why[pc.fill_null(found, -1).to_numpy(zero_copy_only=False)]  # -1: the "" at the end
        reason = np.where(degree < lo, "user_too_rare", np.where(degree > hi, "user_too_active", item_reason))
        tally = _Tally()
        n = pairs.column("rows").to_numpy()
        for name in np.unique(reason[reason != ""]):
            gone = reason == name
            tally.add_all(str(name), int(n[gone].sum()), _details(pairs.filter(pa.array(gone))))
        kept = pairs.filter(pa.array(reason == ""))
        del pairs
        yield from tally.outputs()
        if not self.last:
            path = FileSystems.join(self.directory, f"pairs-round{self.round_no + 1}-{bucket:05d}.arrow")
            _write_table(path, kept)
            yield (bucket, path)
            items = FileSystems.join(self.directory, f"items-round{self.round_no + 1}-{bucket:05d}.arrow")
            yield from _stats(kept, items)
            return
        held = np.array(
            [
                in_eval_split(u, i, self.eval_fraction, self.seed)
                for u, i in zip(kept.column("user").to_pylist(), kept.column("item").to_pylist())
            ],
            bool,
        )
        for name, rows in (("train", ~held), ("eval", held)):
            part = kept.filter(pa.array(rows))
            if part.num_rows:
                out = FileSystems.join(self.directory, f"{name}-{bucket:05d}.gz")  # a retry writes it again
                yield beam.pvalue.TaggedOutput("files", (name, out, examples.write_records(out, _encode(part))))
        yield beam.pvalue.TaggedOutput("outcomes", (USED, int(kept.column("rows").to_numpy().sum()), None))
        yield beam.pvalue.TaggedOutput(
            "counts",
            {"train": int((~held).sum()), "eval": int(held.sum()), "users": len(pc.unique(kept.column("user")))},
        )
        items = FileSystems.join(self.directory, f"items-kept-{bucket:05d}.arrow")
        _write_table(items, pa.table({"item": pc.unique(kept.column("item"))}))
        yield beam.pvalue.TaggedOutput("items", items)


class _SumDicts(beam.CombineFn):
    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, d):
        acc.update(d)
        return acc

    def merge_accumulators(self, accs):
        out = Counter()
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc):
        return dict(acc)


def _item_limits(degrees: pa.Table, cfg) -> pa.Table:
    """The items a round drops: (item, reason) for those whose number of users is outside the limits."""
    n = degrees.column("n").to_numpy(zero_copy_only=False)
    values, counts = np.unique(n, return_counts=True)
    lo, hi = degree_limits(dict(zip(values.tolist(), counts.tolist())), cfg.min_item_users, cfg.max_item_quantile)
    reason = np.where(n < lo, "item_too_rare", np.where(n > hi, "item_too_popular", ""))
    gone = reason != ""
    return pa.table({"item": degrees.column("item").filter(pa.array(gone)), "reason": pa.array(reason[gone])})


def _limits(stats, tag: str, cfg):
    """A round's statistics -> (user limits, a table of the items it drops and why), as side inputs."""
    user_limits = (
        stats.user_histogram
        | f"{tag}UserHistogram" >> beam.CombineGlobally(_SumDicts())
        | f"{tag}UserLimits" >> beam.Map(degree_limits, cfg.min_user_items, cfg.max_user_quantile)
    )
    dropped = (
        stats.item_users
        | f"{tag}ItemFiles" >> beam.combiners.ToList()
        | f"{tag}ItemLimits" >> beam.Map(lambda paths: _item_limits(item_degrees(paths), cfg))
    )
    return beam.pvalue.AsSingleton(user_limits), beam.pvalue.AsSingleton(dropped)


def histogram_quantile(histogram: dict[int, int], q: float) -> float:
    """np.quantile(values, q) (linear interpolation) of the values a {value: count} histogram
    describes, without expanding them: memory grows with the distinct values, not with their count."""
    values = np.array(sorted(histogram), dtype=np.float64)
    ends = np.cumsum([histogram[v] for v in sorted(histogram)])  # last position (exclusive) of each value
    h = (ends[-1] - 1) * q
    lo = int(math.floor(h))

    def at(pos):
        return values[np.searchsorted(ends, pos, side="right")]

    below = at(lo)
    return float(below + (h - lo) * (at(min(lo + 1, ends[-1] - 1)) - below))


def degree_limits(histogram: dict[int, int], minimum: int, max_quantile: float) -> tuple[int, float]:
    """Keep degrees in [minimum, upper]; upper is the max_quantile of the degrees, given as a
    {degree: number of users (or items) with it} histogram."""
    if not histogram or max_quantile >= 1.0:
        return minimum, math.inf
    return minimum, histogram_quantile(histogram, max_quantile)


class AggregateLogs(beam.PTransform):
    """Record batches of log rows (columns user, item, event) -> {"files", "outcomes", "summary"}.

    "files": (split, path, records) for every file of tf.Examples {user_id, item_id, weight, events}
    written under `work_dir` for the "train" and "eval" splits; the caller moves them (only the files
    reported: a retried bundle's leftovers stay behind) and removes work_dir afterwards.
    `catalogue`: the known item ids (a PCollection of them, or a Python collection), or None to
    accept all; given to the workers as a side input.
    `work_dir`: where the bucket files go (a directory every worker can reach: under the output
    artifact's URI in the pipeline). `rows`: about how many rows there are, for the number of hash
    buckets of users, rows / cfg.bucket_rows (a worker holds one bucket's pairs at a time).
    "outcomes": (outcome, input rows, detail) tuples for collabfeat.outcomes.WriteOutcomes.
    "summary": one dict {"pairs": {"train": n, "eval": n}, "users": n, "items": n}, counted by Beam.
    """

    def __init__(self, cfg, work_dir: str, rows: int = 0, catalogue=None):
        super().__init__()
        self.cfg, self.work_dir, self.catalogue = cfg, work_dir, catalogue
        self.buckets = bucket_count(rows, cfg)

    def expand(self, batches):
        cfg, weights, catalogue = self.cfg, dict(self.cfg.event_weights), self.catalogue
        spill = _Spill(self.work_dir, weights, self.buckets)
        if catalogue is not None:
            if not isinstance(catalogue, beam.PCollection):
                catalogue = batches.pipeline | "Catalogue" >> beam.Create(sorted(set(catalogue)))
            known = beam.pvalue.AsDict(catalogue | "KnownItems" >> beam.Map(lambda i: (i, True)))
            spilled = batches | "Spill" >> beam.ParDo(spill, known).with_outputs("outcomes", main="files")
        else:
            spilled = batches | "Spill" >> beam.ParDo(spill).with_outputs("outcomes", main="files")
        stats = (
            spilled.files
            | "FilesByBucket" >> beam.GroupByKey()
            | "Aggregate"
            >> beam.ParDo(_Aggregate(self.work_dir, weights)).with_outputs(
                "outcomes", "user_histogram", "item_users", main="pairs"
            )
        )
        losses = [spilled.outcomes, stats.outcomes]
        rounds = max(1, cfg.filter_rounds)
        for r in range(rounds):
            last = r == rounds - 1
            user_limits, dropped = _limits(stats, f"Round{r}", cfg)
            tags = ("outcomes", "files", "counts", "items") if last else ("outcomes", "user_histogram", "item_users")
            stats = stats.pairs | f"Round{r}Filter" >> beam.ParDo(
                _FilterRound(self.work_dir, r, last, cfg.eval_fraction, cfg.split_seed), user_limits, dropped
            ).with_outputs(*tags, main="pairs")
            losses.append(stats.outcomes)
        return {
            "files": stats.files,
            "outcomes": losses | "AllOutcomes" >> beam.Flatten(),
            "summary": _summary(stats.counts, stats["items"]),
        }


def _summary(counts, items):
    """Pairs per split and distinct users and items, counted by Beam (not by the driver)."""
    n_items = items | "ItemFiles" >> beam.combiners.ToList() | "CountItems" >> beam.Map(_distinct_items)
    return (
        counts
        | "SumCounts" >> beam.CombineGlobally(_SumDicts())
        | "Summary"
        >> beam.Map(
            lambda c, i: {
                "pairs": {"train": c.get("train", 0), "eval": c.get("eval", 0)},
                "users": c.get("users", 0),
                "items": i,
            },
            i=beam.pvalue.AsSingleton(n_items),
        )
    )


def _distinct_items(paths: list[str]) -> int:
    """Files of items (the kept items of a bucket each) -> how many distinct items there are in all."""
    return len(pc.unique(_read_tables(paths).column("item").combine_chunks())) if paths else 0


def log_batches(file: tuple[int, str], columns: dict[str, str]) -> Iterator[pa.RecordBatch]:
    """(index, path) of a file of log tf.Examples -> record batches with columns user, item and event
    (`columns`: our name -> the logs' column; a column the records lack is null throughout), and seq,
    each row's place in the logs (file index * 2^40 + its row in the file)."""
    index, path = file
    done = 0
    for batch in examples.record_batches(path, BATCH_ROWS):
        names = set(batch.schema.names)
        seq = pa.array(np.arange(done, done + batch.num_rows, dtype=np.int64) + (index << 40))
        done += batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [batch.column(c) if c in names else pa.nulls(batch.num_rows) for c in columns.values()] + [seq],
            [*columns, "seq"],
        )


def transform_logs(
    p: beam.Pipeline,
    logs_uri: str,
    split: str,
    rows_in: int,
    out_uri: str,
    cfg: Config,
    catalogue_uri: str | None = None,
) -> dict:
    """The LogTransform component's work: split `split` of the behaviour logs (Examples under logs_uri,
    rows_in rows) -> splits "train" and "eval" of weighted (user, item) pairs under out_uri, in hash
    buckets of users of about transform.bucket_rows log rows each, spilled under out_uri and removed
    after. With a catalogue (Examples with a "catalogue" split), items it does not hold are rejected.
    Runs `p` and returns the report: every row's outcome and the data's summary."""
    cols = cfg.data
    columns = {"user": cols.user_column, "item": cols.item_column, "event": cols.event_column}
    outcomes_path = os.path.join(out_uri, "outcomes.json")
    summary_path = os.path.join(out_uri, "summary.json")
    work_dir = os.path.join(out_uri, "_buckets")
    manifest = os.path.join(work_dir, "files.json")
    files = examples.split_files(logs_uri, split)
    storage.makedirs(work_dir)
    try:
        with p:
            known = None
            if catalogue_uri is not None:
                known = (
                    p
                    | "ReadCatalogue" >> examples.ReadSplit(catalogue_uri, "catalogue")
                    | "ItemIds" >> beam.Map(lambda r: r["item_id"].decode())
                )
            out = (
                p
                | "LogFiles" >> beam.Create(list(enumerate(files)))
                | "Spread" >> beam.Reshuffle()
                | "ReadLogs" >> beam.FlatMap(log_batches, columns)
                | "Aggregate" >> AggregateLogs(cfg.transform, work_dir, rows_in, known)
            )
            _ = (
                out["files"]
                | "FileList" >> beam.combiners.ToList()
                | "FilesJson" >> beam.Map(json.dumps)
                | "WriteFiles" >> beam.io.WriteToText(manifest, shard_name_template="", num_shards=1)
            )
            _ = out["outcomes"] | "Outcomes" >> outcomes.WriteOutcomes(outcomes_path)
            _ = (
                out["summary"]
                | "SummaryJson" >> beam.Map(json.dumps)
                | "WriteSummary" >> beam.io.WriteToText(summary_path, shard_name_template="", num_shards=1)
            )
        written = storage.read_json(manifest)
        for name in ("train", "eval"):
            examples.move_parts([(path, n) for s, path, n in written if s == name], examples.split_dir(out_uri, name))
    finally:
        storage.rmtree(work_dir)
    rows = outcomes.read(outcomes_path)
    return {
        "rows": rows["counts"],
        "rows_total": sum(rows["counts"].values()),
        "rejected_examples": rows["examples"],
        "buckets": bucket_count(rows_in, cfg.transform),
        "bucket_rows": cfg.transform.bucket_rows,
        **outcomes.read(summary_path),
    }
