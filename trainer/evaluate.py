"""Retrieval quality of a feature set on labelled images: precision@k and mAP.

Every image queries all the others (leave-one-out); an answer is relevant when it has the
query's label. Features must be L2-normalised: similarity is the dot product.
"""
from __future__ import annotations

from typing import Dict

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


def bless(table: Dict[str, Dict[str, float]], served: str, metric: str, margin: float):
    """-> (blessed, margins): the served features must beat each of random-init and pixels on
    `metric` by at least `margin`. A missing baseline cannot be beaten: not blessed."""
    margins = {b: table[served][metric] - table[b][metric] for b in BLESSING_BASELINES if b in table}
    blessed = len(margins) == len(BLESSING_BASELINES) and all(m >= margin for m in margins.values())
    return blessed, margins
