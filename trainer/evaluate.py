"""Retrieval quality of a feature set on labelled images: precision@k and mAP.

Every image queries all the others (leave-one-out); an answer is relevant when it has the
query's label. Features must be L2-normalised: similarity is the dot product.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from collabfeat import topk


def retrieval_metrics(features: np.ndarray, labels: np.ndarray, k: int,
                      max_queries: int = 0, seed: int = 0) -> Dict[str, float]:
    """Every image (or a seeded sample of `max_queries` of them) ranks all the others; computed in
    chunks of queries so that memory stays bounded (collabfeat/topk.py)."""
    n = len(features)
    if n < 2:
        raise ValueError("retrieval needs at least two labelled images")
    k = min(k, n - 1)
    queries = topk.sample(n, max_queries, seed)
    ranks = np.arange(1, n)
    precision, ap = [], []
    for rows in topk.row_chunks(len(queries), n, topk.BUDGET // 4):
        q = queries[rows]
        sims = features[q] @ features.T
        sims[np.arange(len(q)), q] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]   # the query itself sorts last
        relevant = labels[order] == labels[q][:, None]
        precision.append(relevant[:, :k].mean(axis=1))
        hits = np.cumsum(relevant, axis=1)
        n_rel = relevant.sum(axis=1)
        ap.append(np.where(n_rel > 0, (relevant * hits / ranks).sum(axis=1) / np.maximum(n_rel, 1), 0.0))
    return {f"precision@{k}": float(np.concatenate(precision).mean()), "mAP": float(np.concatenate(ap).mean())}


BLESSING_BASELINES = ("random", "pixels")
COLLABORATIVE = ("regression", "pseudo_class", "imagenet_regression")


def targets(facets: Dict[str, Dict], metric: str, within: float = 0.10) -> List[Dict]:
    """The paper's claim as checks on the facet tables ({facet: {"table": {features: metrics}}}),
    for each collaborative row: on style it beats category-supervised and ImageNet features; on
    category it is within `within` (relative) of category-supervised; on every facet it beats
    random-init and pixels. -> [{"target", "met", "values": [[row, value], ...]}]; a check whose rows are missing is left out."""
    out = []

    def check(name, met, values):
        out.append({"target": name, "met": bool(met), "values": [[k, round(v, 4)] for k, v in values.items()]})

    for row in (r for r in COLLABORATIVE if any(r in f["table"] for f in facets.values())):
        style = facets.get("style", {}).get("table", {})
        if row in style:
            for other in ("supervised", "imagenet"):
                if other in style:
                    check(f"style: {row} beats {other}", style[row][metric] > style[other][metric],
                          {row: style[row][metric], other: style[other][metric]})
        cat = facets.get("category", {}).get("table", {})
        if row in cat and "supervised" in cat:
            check(f"category: {row} within {within:.0%} of supervised",
                  cat[row][metric] >= (1 - within) * cat["supervised"][metric],
                  {row: cat[row][metric], "supervised": cat["supervised"][metric]})
        for facet, f in facets.items():
            t = f["table"]
            if row in t:
                for other in BLESSING_BASELINES:
                    if other in t:
                        check(f"{facet}: {row} beats {other}", t[row][metric] > t[other][metric],
                              {row: t[row][metric], other: t[other][metric]})
    return out


def overall(tables: Dict[str, Dict[str, Dict[str, float]]], on: str = "mean") -> Dict[str, Dict[str, float]]:
    """The measure a model is blessed and pushed on (eval.bless_on), from the facets' tables
    ({facet: {features: metrics}}): one facet's table, or "mean": each metric averaged over the
    facets, for the feature sets that every facet has."""
    if on != "mean":
        if on not in tables:
            raise ValueError(f"eval.bless_on is {on!r}, but the evaluation has the facets {sorted(tables)} (or 'mean')")
        return tables[on]
    names = set.intersection(*(set(t) for t in tables.values())) if tables else set()
    return {n: {m: float(np.mean([t[n][m] for t in tables.values()])) for m in next(iter(tables.values()))[n]}
            for n in sorted(names)}


def describe(images: Dict[str, int], on: str = "mean") -> str:
    """What overall() measured on: 'category, 2000 images' or 'the mean over category (2000 images), ...'."""
    if on != "mean":
        return f"{on}, {images[on]} images"
    return "the mean over " + ", ".join(f"{f} ({n} images)" for f, n in images.items())


def bless(table: Dict[str, Dict[str, float]], served: str, metric: str, margin: float):
    """-> (blessed, margins): the served features must beat each of random-init and pixels on
    `metric` by at least `margin`. A missing baseline cannot be beaten: not blessed."""
    margins = {b: table[served][metric] - table[b][metric] for b in BLESSING_BASELINES if b in table}
    blessed = len(margins) == len(BLESSING_BASELINES) and all(m >= margin for m in margins.values())
    return blessed, margins
