"""Retrieval quality of a feature set on labelled images: precision@k and mAP.

Every image (or every image of a query subset) queries all the others (leave-one-out); an answer
is relevant when it has the query's label. Features must be L2-normalised: similarity is the dot
product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from collabfeat import topk
from collabfeat.features import COLLABORATIVE


def query_rows(n: int, candidates: np.ndarray | None, max_queries: int, seed: int) -> np.ndarray:
    """The rows that query: all n (or the `candidates`: a boolean mask), a seeded sample of
    `max_queries` of them beyond that."""
    rows = np.arange(n) if candidates is None else np.flatnonzero(candidates)
    return rows[topk.sample(len(rows), max_queries, seed)]


def chance(labels: np.ndarray, candidates: np.ndarray | None = None) -> float:
    """precision@k of a random ranking: for each query, the share of the other images that have its label."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    q = labels if candidates is None else labels[candidates]
    return float(((counts[q] - 1) / max(len(labels) - 1, 1)).mean()) if len(q) else 0.0


def retrieval_metrics(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    max_queries: int = 0,
    seed: int = 0,
    candidates: np.ndarray | None = None,
) -> dict[str, float]:
    """Every image (or each of `candidates`, a boolean mask; a seeded sample of `max_queries` of
    them beyond that) ranks all the others; computed in chunks of queries so that memory stays
    bounded (collabfeat/topk.py)."""
    n = len(features)
    if n < 2:
        raise ValueError("retrieval needs at least two labelled images")
    k = min(k, n - 1)
    queries = query_rows(n, candidates, max_queries, seed)
    if not len(queries):
        raise ValueError("retrieval needs at least one query image")
    ranks = np.arange(1, n)
    precision, ap = [], []
    for rows in topk.row_chunks(len(queries), n, topk.BUDGET // 4):
        q = queries[rows]
        sims = features[q] @ features.T
        sims[np.arange(len(q)), q] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]  # the query itself sorts last
        relevant = labels[order] == labels[q][:, None]
        precision.append(relevant[:, :k].mean(axis=1))
        hits = np.cumsum(relevant, axis=1)
        n_rel = relevant.sum(axis=1)
        ap.append(np.where(n_rel > 0, (relevant * hits / ranks).sum(axis=1) / np.maximum(n_rel, 1), 0.0))
    return {f"precision@{k}": float(np.concatenate(precision).mean()), "mAP": float(np.concatenate(ap).mean())}


BLESSING_BASELINES = ("random", "pixels")


# The claims checked on every collaborative row, per facet: (other feature set, how it must
# compare). ("plus", m): the row's precision must reach the other's + m; ("times", f): f x the other's.
TARGETS = {
    "style": [
        ("imagenet", "plus", 0.05),
        ("supervised", "plus", 0.05),
        ("random", "plus", 0.10),
        ("pixels", "plus", 0.10),
    ],
    "unseen_style": [("imagenet", "plus", 0.0), ("random", "plus", 0.0), ("pixels", "plus", 0.0)],
    "category": [("random", "plus", 0.05), ("pixels", "plus", 0.05), ("imagenet", "times", 0.8)],
    "transfer": [("random", "plus", 0.0), ("pixels", "plus", 0.0)],
}


FACETS = tuple(TARGETS)  # the reports' columns, in this order


def in_order(facets: dict[str, dict]) -> dict[str, dict]:
    """The facets in FACETS' order (reports are stored with sorted keys), any others after them."""
    return {name: facets[name] for name in sorted(facets, key=lambda f: (FACETS + (f,)).index(f))}


def targets(facets: dict[str, dict], metric: str, rows: Sequence[str] = COLLABORATIVE) -> list[dict]:
    """The paper's claim as checks on the facet tables ({facet: {"table": {features: metrics}}}),
    for each of `rows` (the Evaluator: the served features) that is there (TARGETS): on style it
    beats ImageNet and category-supervised features by 0.05 and random-init and pixels by 0.10; on
    an unseen style it is at least level
    with ImageNet, random-init and pixels; on category it beats random-init and pixels by 0.05 and
    reaches 0.8 x ImageNet; on the transfer categories it is at least level with random-init and
    pixels. -> [{"target", "met", "values": [[row, value], ...], "needed"}]; a check whose rows
    are missing is left out."""
    out = []
    for row in (r for r in rows if any(r in f["table"] for f in facets.values())):
        for facet, checks in TARGETS.items():
            t = facets.get(facet, {}).get("table", {})
            if row not in t:
                continue
            for other, how, by in checks:
                if other not in t:
                    continue
                mine, theirs = t[row][metric], t[other][metric]
                needed = theirs + by if how == "plus" else by * theirs
                name = (
                    f"{facet}: {row} >= {other} + {by:.2f}"
                    if how == "plus" and by
                    else f"{facet}: {row} >= {other}"
                    if how == "plus"
                    else f"{facet}: {row} >= {by} x {other}"
                )
                out.append(
                    {
                        "target": name,
                        "met": bool(mine >= needed - 1e-12),
                        "needed": round(needed, 4),
                        "values": [[row, round(mine, 4)], [other, round(theirs, 4)]],
                    }
                )
    return out


def overall(tables: dict[str, dict[str, dict[str, float]]], on: str = "mean") -> dict[str, dict[str, float]]:
    """The measure a model is blessed and pushed on (eval.bless_on), from the facets' tables
    ({facet: {features: metrics}}): one facet's table, or "mean": each metric averaged over the
    facets, for the feature sets that every facet has."""
    if on != "mean":
        if on not in tables:
            raise ValueError(f"eval.bless_on is {on!r}, but the evaluation has the facets {sorted(tables)} (or 'mean')")
        return tables[on]
    names = set.intersection(*(set(t) for t in tables.values())) if tables else set()
    return {
        n: {m: float(np.mean([t[n][m] for t in tables.values()])) for m in next(iter(tables.values()))[n]}
        for n in sorted(names)
    }


def choose(table: dict[str, dict[str, float]], metric: str, serve: str, trained: str) -> str:
    """The collaborative feature set to serve (eval.serve): the one named, or with "best" the
    collaborative row of `table` (overall()) with the highest `metric`; `trained` (the CNNTrainer's,
    always there) wins ties and is served when no other collaborative row is in the table."""
    if serve != "best":
        if serve not in table:
            raise ValueError(f"eval.serve is {serve!r}, but the evaluation has the feature sets {sorted(table)}")
        return serve
    rows = [trained] + [r for r in COLLABORATIVE if r != trained and r in table]
    return max(rows, key=lambda r: (table[r][metric], r == trained))


def describe(images: dict[str, int], on: str = "mean") -> str:
    """What overall() measured on: 'category, 2000 images' or 'the mean over category (2000 images), ...'."""
    if on != "mean":
        return f"{on}, {images[on]} images"
    return "the mean over " + ", ".join(f"{f} ({n} images)" for f, n in images.items())


def bless(table: dict[str, dict[str, float]], served: str, metric: str, margin: float):
    """-> (blessed, margins): the served features must beat each of random-init and pixels on
    `metric` by at least `margin`. A missing baseline cannot be beaten: not blessed."""
    margins = {b: table[served][metric] - table[b][metric] for b in BLESSING_BASELINES if b in table}
    blessed = len(margins) == len(BLESSING_BASELINES) and all(m >= margin for m in margins.values())
    return blessed, margins
