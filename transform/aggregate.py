"""The Beam log transform: behaviour rows -> one weighted (user, item) pair each.

    V_ij = log1p( sum_e w_e * n_ije )      n_ije: events of type e by user i on item j

Then the least and most popular users and items are removed, for `filter_rounds`
rounds (removing an item can push a user under the minimum), and each user's
pairs are split into train and eval by a seeded hash.

Every input row ends with exactly one outcome (collabfeat/outcomes.py), counted in the report:
  used, or a reason: missing_user, missing_item, unknown_event, unknown_item,
  zero_weight, user_too_rare, user_too_active, item_too_rare, item_too_popular.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np

from collabfeat.outcomes import USED

REASONS = ("missing_user", "missing_item", "unknown_event", "unknown_item", "zero_weight",
           "user_too_rare", "user_too_active", "item_too_rare", "item_too_popular")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def validate_row(row: Dict[str, Any], event_weights: Dict[str, float],
                 catalogue: Optional[set]) -> Tuple[str, Any]:
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


def pair_weight(event_counts: Dict[str, int], event_weights: Dict[str, float]) -> float:
    return math.log1p(sum(event_weights[e] * n for e, n in event_counts.items()))


def in_eval_split(user: str, item: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}\x1f{user}\x1f{item}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def histogram_quantile(histogram: Dict[int, int], q: float) -> float:
    """np.quantile(values, q) (linear interpolation) of the values a {value: count} histogram
    describes, without expanding them: memory grows with the distinct values, not with their count."""
    values = np.array(sorted(histogram), dtype=np.float64)
    ends = np.cumsum([histogram[v] for v in sorted(histogram)])   # last position (exclusive) of each value
    h = (ends[-1] - 1) * q
    lo = int(math.floor(h))

    def at(pos):
        return values[np.searchsorted(ends, pos, side="right")]
    below = at(lo)
    return float(below + (h - lo) * (at(min(lo + 1, ends[-1] - 1)) - below))


def degree_limits(histogram: Dict[int, int], minimum: int, max_quantile: float) -> Tuple[int, float]:
    """Keep degrees in [minimum, upper]; upper is the max_quantile of the degrees, given as a
    {degree: number of users (or items) with it} histogram."""
    if not histogram or max_quantile >= 1.0:
        return minimum, math.inf
    return minimum, histogram_quantile(histogram, max_quantile)


class _CountEvents(beam.CombineFn):
    """Per pair: counts by event type and the number of rows."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, event):
        acc[event] = acc.get(event, 0) + 1
        return acc

    def merge_accumulators(self, accs):
        out: Dict[str, int] = {}
        for acc in accs:
            for k, v in acc.items():
                out[k] = out.get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc


def _filter_round(pairs, round_no: int, cfg) -> Tuple[Any, Any]:
    """One popularity-filter round. pairs: (user, item, weight, rows). -> (kept, dropped reason counts)."""
    tag = f"Round{round_no}"

    def limits(pcoll, key_index, minimum, quantile, name):
        degree = (pcoll | f"{tag}{name}Key" >> beam.Map(lambda p: (p[key_index], 1))
                  | f"{tag}{name}Degree" >> beam.CombinePerKey(sum))
        bounds = (degree | f"{tag}{name}Values" >> beam.Map(lambda kd: (kd[1], 1))
                  | f"{tag}{name}Histogram" >> beam.CombinePerKey(sum)
                  | f"{tag}{name}HistogramDict" >> beam.combiners.ToDict()
                  | f"{tag}{name}Limits" >> beam.Map(degree_limits, minimum, quantile))
        return degree, bounds

    user_deg, user_lim = limits(pairs, 0, cfg.min_user_items, cfg.max_user_quantile, "User")
    item_deg, item_lim = limits(pairs, 1, cfg.min_item_users, cfg.max_item_quantile, "Item")

    def dropped(deg_lim, rare, heavy):
        (key, deg), (lo, hi) = deg_lim
        if deg < lo:
            return [(key, rare)]
        if deg > hi:
            return [(key, heavy)]
        return []

    user_drop = (user_deg | f"{tag}UserDrop" >> beam.FlatMap(
        lambda kd, lim: dropped((kd, lim), "user_too_rare", "user_too_active"),
        lim=beam.pvalue.AsSingleton(user_lim)))
    item_drop = (item_deg | f"{tag}ItemDrop" >> beam.FlatMap(
        lambda kd, lim: dropped((kd, lim), "item_too_rare", "item_too_popular"),
        lim=beam.pvalue.AsSingleton(item_lim)))

    def route(pair, users, items):
        reason = users.get(pair[0]) or items.get(pair[1])
        if reason:
            yield beam.pvalue.TaggedOutput("dropped", (reason, pair[3], f"user {pair[0]!r}, item {pair[1]!r}"))
        else:
            yield pair

    routed = pairs | f"{tag}Route" >> beam.FlatMap(
        route, users=beam.pvalue.AsDict(user_drop), items=beam.pvalue.AsDict(item_drop)
    ).with_outputs("dropped", main="kept")
    return routed.kept, routed.dropped


class AggregateLogs(beam.PTransform):
    """rows (dicts with user, item, event) -> {"train", "eval": (user, item, weight, rows), "outcomes"}.

    `catalogue`: the known item ids (a PCollection of them, or a Python collection), or None to
    accept all; given to the workers as a side input.
    "outcomes": (outcome, input rows, detail) tuples for collabfeat.outcomes.WriteOutcomes.
    "summary": one dict {"pairs": {"train": n, "eval": n}, "users": n, "items": n}, counted by Beam.
    """

    def __init__(self, cfg, catalogue=None):
        super().__init__()
        self.cfg = cfg
        self.catalogue = catalogue

    def expand(self, rows):
        cfg, weights, catalogue = self.cfg, dict(self.cfg.event_weights), self.catalogue
        known = None
        if catalogue is not None:
            if not isinstance(catalogue, beam.PCollection):
                catalogue = rows.pipeline | "Catalogue" >> beam.Create(sorted(set(catalogue)))
            known = beam.pvalue.AsDict(catalogue | "KnownItems" >> beam.Map(lambda i: (i, True)))

        def check(row, known=None):
            status, value = validate_row(row, weights, known)
            if status == "ok":
                yield value
            else:
                shown = ", ".join(f"{k}={_text(row.get(k))!r}" for k in ("user", "item", "event"))
                yield beam.pvalue.TaggedOutput("rejected", (status, 1, f"row {shown}"))

        validate = beam.FlatMap(check, known=known) if known is not None else beam.FlatMap(check)
        parsed = rows | "Validate" >> validate.with_outputs("rejected", main="ok")
        counted = (parsed.ok | "PairKey" >> beam.Map(lambda r: ((r[0], r[1]), r[2]))
                   | "CountEvents" >> beam.CombinePerKey(_CountEvents()))

        def to_pair(kv):
            (user, item), counts = kv
            rows_n = sum(counts.values())
            w = pair_weight(counts, weights)
            if w <= 0:
                yield beam.pvalue.TaggedOutput("zero", ("zero_weight", rows_n, f"user {user!r}, item {item!r}: {counts}"))
            else:
                yield (user, item, w, rows_n)

        pairs = counted | "Weigh" >> beam.FlatMap(to_pair).with_outputs("zero", main="pairs")
        kept, losses = pairs.pairs, [parsed.rejected, pairs.zero]
        for r in range(max(1, cfg.filter_rounds)):
            kept, dropped = _filter_round(kept, r, cfg)
            losses.append(dropped)

        used = kept | "UsedRows" >> beam.Map(lambda p: (USED, p[3], None))
        outcomes = (losses + [used]) | "AllOutcomes" >> beam.Flatten()

        split = kept | "Split" >> beam.Partition(
            lambda p, _n: int(in_eval_split(p[0], p[1], cfg.eval_fraction, cfg.split_seed)), 2)
        return {"train": split[0], "eval": split[1], "outcomes": outcomes,
                "summary": _summary(kept, split[0], split[1])}


def _summary(kept, train, evaluation):
    """Pairs per split and distinct users and items, counted by Beam (not by the driver)."""
    def count(pcoll, name):
        return pcoll | f"Count{name}" >> beam.combiners.Count.Globally()

    def distinct(index, name):
        return count(kept | f"{name}Ids" >> beam.Map(lambda p: p[index]) | f"{name}Distinct" >> beam.Distinct(), name)

    users, items = distinct(0, "Users"), distinct(1, "Items")
    n_train, n_eval = count(train, "Train"), count(evaluation, "Eval")
    return (n_train | "Summary" >> beam.Map(
        lambda t, e, u, i: {"pairs": {"train": t, "eval": e}, "users": u, "items": i},
        e=beam.pvalue.AsSingleton(n_eval), u=beam.pvalue.AsSingleton(users), i=beam.pvalue.AsSingleton(items)))
