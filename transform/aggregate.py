"""The Beam log transform: behaviour rows -> one weighted (user, item) pair each.

    V_ij = log1p( sum_e w_e * n_ije )      n_ije: events of type e by user i on item j

Then the least and most popular users and items are removed, for `filter_rounds`
rounds (removing an item can push a user under the minimum), and each user's
pairs are split into train and eval by a seeded hash.

Every input row ends with exactly one outcome (collabfeat/outcomes.py), counted in the report:
  used, or a reason: missing_user, missing_item, unknown_event, unknown_item,
  zero_weight, user_too_rare, user_too_active, item_too_rare, item_too_popular.

Bounded memory. No shuffle carries the rows or the pairs: a runner that holds a shuffle's input
in memory (Beam's DirectRunner and its portable job service do) would hold the whole log. The
valid rows are spilled to hash buckets of users, files under `work_dir`, each bundle writing its
own file per bucket; then each bucket is aggregated on its own (its users' pairs are all in it),
and every filter round reads a bucket's pairs from its file and writes what it keeps to the next.
What crosses a shuffle is small: file names, per-bucket degree histograms, per-item user counts
and the outcome counts. A worker holds one bucket at a time: about `bucket_rows` rows' pairs
(transform.bucket_rows): AggregateLogs(rows=...) makes rows / bucket_rows buckets.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import pickle
import resource
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

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
CHUNK = 8192  # records per pickled chunk in a bucket file


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def validate_row(row: dict[str, Any], event_weights: dict[str, float], catalogue: set | None) -> tuple[str, Any]:
    """-> ("ok", (user, item, event)) or (reason, None)."""
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


def bucket_of(user: str, buckets: int) -> int:
    """A user's hash bucket, the same in every process (Python's own hash is salted per process)."""
    return zlib.crc32(user.encode()) % buckets


def bucket_count(rows: int, cfg) -> int:
    """Hash buckets of users for about `rows` log rows: about cfg.bucket_rows rows each."""
    return max(1, math.ceil(rows / cfg.bucket_rows))


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


# --- bucket files: pickled chunks of tuples, through Beam's filesystems (local, gs://, ...) ------


def _dump(path: str, records: list[tuple]) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for start in range(0, len(records), CHUNK):
            pickle.dump(records[start : start + CHUNK], f, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: str) -> Iterator[tuple]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while True:
            try:
                chunk = pickle.load(f)
            except EOFError:
                return
            yield from chunk


class _Spill(beam.DoFn):
    """(bucket, row) -> each bundle's rows appended to a file of its own per bucket; at the bundle's
    end, (bucket, path) for every file it wrote. Only the paths emitted are read later, so a bundle
    that fails and is retried leaves nothing behind that counts twice."""

    def __init__(self, directory: str, buckets: int, hold: int):
        self.directory, self.buckets = directory, buckets
        self.chunk = max(64, hold // buckets)  # rows held per bucket before they are written

    def setup(self):
        """A bundle keeps a file open per bucket: let the worker open that many, and some."""

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.buckets + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    def start_bundle(self):
        self.buffers: dict[int, list] = {}
        self.files: dict[int, tuple] = {}
        self.tag = uuid.uuid4().hex

    def process(self, kv):
        bucket, row = kv
        buffer = self.buffers.setdefault(bucket, [])
        buffer.append(row)
        if len(buffer) >= self.chunk:
            self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        if bucket not in self.files:
            path = FileSystems.join(self.directory, f"rows-{bucket:05d}-{self.tag}.pkl")
            self.files[bucket] = (path, FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED))
        pickle.dump(self.buffers[bucket], self.files[bucket][1], protocol=pickle.HIGHEST_PROTOCOL)
        self.buffers[bucket] = []

    def finish_bundle(self):
        for bucket, buffer in self.buffers.items():
            if buffer:
                self._flush(bucket)
        for bucket, (path, f) in self.files.items():
            f.close()
            yield GlobalWindows.windowed_value((bucket, path))


class _Tally:
    """A bucket's (or a bundle's) outcomes as few tuples: rows per outcome, and the EXAMPLES smallest
    details per reason (WriteOutcomes keeps the smallest EXAMPLES of all, so the result is the same
    as for one tuple per pair)."""

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

    def tuples(self) -> Iterator[tuple]:
        """(outcome, rows, None) per outcome, and (reason, 0, detail) per example kept."""
        for reason, n in self.rows.items():
            yield reason, n, None
        for reason, details in self.details.items():
            for d in details:
                yield reason, 0, d

    def outputs(self) -> Iterator[beam.pvalue.TaggedOutput]:
        for t in self.tuples():
            yield beam.pvalue.TaggedOutput("outcomes", t)


class _Validate(beam.DoFn):
    """rows -> (bucket, (user, item, event)) for the valid ones; the rejected ones tallied per bundle
    (a log with many bad rows sends a few tuples per bundle, not one per row, to the outcomes'
    Flatten, which the DirectRunner holds in memory)."""

    def __init__(self, event_weights: dict[str, float], buckets: int):
        self.weights, self.buckets = dict(event_weights), buckets

    def start_bundle(self):
        self.tally = _Tally()

    def process(self, row, known=None):
        status, value = validate_row(row, self.weights, known)
        if status == "ok":
            yield bucket_of(value[0], self.buckets), value
        else:
            shown = ", ".join(f"{k}={_text(row.get(k))!r}" for k in ("user", "item", "event"))
            self.tally.add(status, 1, f"row {shown}")

    def finish_bundle(self):
        for t in self.tally.tuples():
            yield beam.pvalue.TaggedOutput("rejected", GlobalWindows.windowed_value(t))


def _stats(pairs: list[tuple]) -> Iterator[Any]:
    """What the next filter round's limits need from a bucket: its users' degree histogram (a
    bucket holds all of its users' pairs) and each item's number of users in it."""
    degrees = Counter(p[0] for p in pairs)
    yield beam.pvalue.TaggedOutput("user_histogram", dict(Counter(degrees.values())))
    for item, n in Counter(p[1] for p in pairs).items():
        yield beam.pvalue.TaggedOutput("item_users", (item, n))


class _Aggregate(beam.DoFn):
    """(bucket, [row files]) -> the bucket's weighted pairs (user, item, weight, rows) in a file,
    (bucket, that path), zero-weight outcomes and the first round's statistics."""

    def __init__(self, directory: str, event_weights: dict[str, float]):
        self.directory, self.weights = directory, dict(event_weights)

    def process(self, kv):
        bucket, paths = kv
        events = sorted(self.weights)
        index = {e: k for k, e in enumerate(events)}
        counts: dict[tuple[str, str], list[int]] = {}
        for path in paths:
            for user, item, event in _load(path):
                c = counts.get((user, item))
                if c is None:
                    c = counts[(user, item)] = [0] * len(events)
                c[index[event]] += 1
        tally, pairs = _Tally(), []
        for (user, item), c in counts.items():
            by_event = {e: c[k] for k, e in enumerate(events) if c[k]}
            rows, w = sum(c), pair_weight(by_event, self.weights)
            if w <= 0:
                tally.add("zero_weight", rows, f"user {user!r}, item {item!r}: {by_event}")
            else:
                pairs.append((user, item, w, rows))
        del counts
        path = FileSystems.join(self.directory, f"pairs-round0-{bucket:05d}.pkl")
        _dump(path, pairs)
        yield (bucket, path)
        yield from tally.outputs()
        yield from _stats(pairs)


class _FilterRound(beam.DoFn):
    """One popularity-filter round over a bucket's pairs: a pair goes when its user's degree is
    outside the user limits, or its item was found too rare or too popular in this round. The kept
    pairs go to the next round's file, or (in the last round) out as train and eval."""

    def __init__(self, directory: str, round_no: int, last: bool, eval_fraction: float, seed: int):
        self.directory, self.round_no, self.last = directory, round_no, last
        self.eval_fraction, self.seed = eval_fraction, seed

    def process(self, kv, user_limits, item_reasons):
        bucket, path = kv
        pairs = list(_load(path))
        degrees = Counter(p[0] for p in pairs)
        lo, hi = user_limits
        tally, kept = _Tally(), []
        for p in pairs:
            d = degrees[p[0]]
            reason = "user_too_rare" if d < lo else "user_too_active" if d > hi else item_reasons.get(p[1])
            if reason:
                tally.add(reason, p[3], f"user {p[0]!r}, item {p[1]!r}")
            else:
                kept.append(p)
        del pairs
        yield from tally.outputs()
        if not self.last:
            path = FileSystems.join(self.directory, f"pairs-round{self.round_no + 1}-{bucket:05d}.pkl")
            _dump(path, kept)
            yield (bucket, path)
            yield from _stats(kept)
            return
        split = Counter()
        for p in kept:
            name = "eval" if in_eval_split(p[0], p[1], self.eval_fraction, self.seed) else "train"
            split[name] += 1
            yield beam.pvalue.TaggedOutput(name, p)
        yield beam.pvalue.TaggedOutput("outcomes", (USED, sum(p[3] for p in kept), None))
        yield beam.pvalue.TaggedOutput(
            "counts", {"train": split["train"], "eval": split["eval"], "users": len({p[0] for p in kept})}
        )
        for item in {p[1] for p in kept}:
            yield beam.pvalue.TaggedOutput("items", item)


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


def _limits(stats, tag: str, cfg):
    """A round's statistics -> (user limits, {item: reason} for the items it drops), as side inputs."""
    user_limits = (
        stats.user_histogram
        | f"{tag}UserHistogram" >> beam.CombineGlobally(_SumDicts())
        | f"{tag}UserLimits" >> beam.Map(degree_limits, cfg.min_user_items, cfg.max_user_quantile)
    )
    item_degree = stats.item_users | f"{tag}ItemDegree" >> beam.CombinePerKey(sum)
    item_limits = (
        item_degree
        | f"{tag}ItemValues" >> beam.Map(lambda kd: (kd[1], 1))
        | f"{tag}ItemHistogram" >> beam.CombinePerKey(sum)
        | f"{tag}ItemHistogramDict" >> beam.combiners.ToDict()
        | f"{tag}ItemLimits" >> beam.Map(degree_limits, cfg.min_item_users, cfg.max_item_quantile)
    )

    def dropped(kd, lim):
        (item, deg), (lo, hi) = kd, lim
        if deg < lo:
            yield item, "item_too_rare"
        elif deg > hi:
            yield item, "item_too_popular"

    item_reasons = item_degree | f"{tag}ItemDrop" >> beam.FlatMap(dropped, lim=beam.pvalue.AsSingleton(item_limits))
    return beam.pvalue.AsSingleton(user_limits), beam.pvalue.AsDict(item_reasons)


class AggregateLogs(beam.PTransform):
    """rows (dicts with user, item, event) -> {"train", "eval": (user, item, weight, rows), "outcomes"}.

    `catalogue`: the known item ids (a PCollection of them, or a Python collection), or None to
    accept all; given to the workers as a side input.
    `work_dir`: where the bucket files go (a directory every worker can reach: under the output
    artifact's URI in the pipeline); the caller removes it afterwards. `rows`: about how many rows
    there are, for the number of hash buckets of users, rows / cfg.bucket_rows (a worker holds one
    bucket's pairs at a time, and at most bucket_rows rows, or 2^16, waiting to be spilled).
    "outcomes": (outcome, input rows, detail) tuples for collabfeat.outcomes.WriteOutcomes.
    "summary": one dict {"pairs": {"train": n, "eval": n}, "users": n, "items": n}, counted by Beam.
    """

    def __init__(self, cfg, work_dir: str, rows: int = 0, catalogue=None):
        super().__init__()
        self.cfg, self.work_dir, self.catalogue = cfg, work_dir, catalogue
        self.buckets = bucket_count(rows, cfg)
        self.hold = min(1 << 16, cfg.bucket_rows)

    def expand(self, rows):
        cfg, weights, catalogue, buckets = self.cfg, dict(self.cfg.event_weights), self.catalogue, self.buckets
        known = None
        if catalogue is not None:
            if not isinstance(catalogue, beam.PCollection):
                catalogue = rows.pipeline | "Catalogue" >> beam.Create(sorted(set(catalogue)))
            known = beam.pvalue.AsDict(catalogue | "KnownItems" >> beam.Map(lambda i: (i, True)))

        validate = _Validate(weights, buckets)
        validate = beam.ParDo(validate, known) if known is not None else beam.ParDo(validate)
        parsed = rows | "Validate" >> validate.with_outputs("rejected", main="ok")
        files = (
            parsed.ok
            | "Spill" >> beam.ParDo(_Spill(self.work_dir, buckets, self.hold))
            | "FilesByBucket" >> beam.GroupByKey()
        )
        stats = files | "Aggregate" >> beam.ParDo(_Aggregate(self.work_dir, weights)).with_outputs(
            "outcomes", "user_histogram", "item_users", main="pairs"
        )
        losses = [parsed.rejected, stats.outcomes]
        rounds = max(1, cfg.filter_rounds)
        for r in range(rounds):
            last = r == rounds - 1
            user_limits, item_reasons = _limits(stats, f"Round{r}", cfg)
            tags = (
                ("outcomes", "train", "eval", "counts", "items")
                if last
                else ("outcomes", "user_histogram", "item_users")
            )
            stats = stats.pairs | f"Round{r}Filter" >> beam.ParDo(
                _FilterRound(self.work_dir, r, last, cfg.eval_fraction, cfg.split_seed), user_limits, item_reasons
            ).with_outputs(*tags, main="pairs")
            losses.append(stats.outcomes)
        outcomes = losses | "AllOutcomes" >> beam.Flatten()
        return {
            "train": stats.train,
            "eval": stats.eval,
            "outcomes": outcomes,
            "summary": _summary(stats.counts, stats["items"]),
        }


def _summary(counts, items):
    """Pairs per split and distinct users and items, counted by Beam (not by the driver)."""
    n_items = items | "ItemsDistinct" >> beam.Distinct() | "CountItems" >> beam.combiners.Count.Globally()
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
    outcomes_path = os.path.join(out_uri, "outcomes.json")
    summary_path = os.path.join(out_uri, "summary.json")
    work_dir = os.path.join(out_uri, "_buckets")

    def row(r):
        return {"user": r.get(cols.user_column), "item": r.get(cols.item_column), "event": r.get(cols.event_column)}

    def record(pair):
        return {"user_id": pair[0], "item_id": pair[1], "weight": float(pair[2]), "events": pair[3]}

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
                | "ReadLogs" >> examples.ReadSplit(logs_uri, split)
                | "Columns" >> beam.Map(row)
                | "Aggregate" >> AggregateLogs(cfg.transform, work_dir, rows_in, known)
            )
            for name in ("train", "eval"):
                _ = (
                    out[name]
                    | f"Record{name}" >> beam.Map(record)
                    | f"Write{name}" >> examples.WriteSplit(out_uri, name)
                )
            _ = out["outcomes"] | "Outcomes" >> outcomes.WriteOutcomes(outcomes_path)
            _ = (
                out["summary"]
                | "SummaryJson" >> beam.Map(json.dumps)
                | "WriteSummary" >> beam.io.WriteToText(summary_path, shard_name_template="", num_shards=1)
            )
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
