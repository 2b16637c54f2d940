"""Bounded-memory similarity search: every all-against-all comparison in the project goes through here.

Queries are scored against the database in row chunks so that a chunk's score matrix holds at most
BUDGET floats (128 MB as float32), whatever the database's size; only the top k per query is kept.
Diagnostics that would compare everything with everything first draw a seeded sample of queries
(`sample`), and report the bound they used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

BUDGET = 1 << 25  # scores held at once


def row_chunks(n_rows: int, n_cols: int, budget: int = BUDGET) -> Iterator[slice]:
    """Slices of query rows whose [rows, n_cols] score block fits in `budget` floats."""
    step = max(1, min(n_rows, budget // max(1, n_cols)))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def top_k(
    queries: np.ndarray,
    db: np.ndarray,
    k: int,
    mask: Callable[[slice, np.ndarray], None] | None = None,
    budget: int = BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best database rows by dot product for each query, best first (of equal scores, the lower
    row first): (rows [q, k], scores [q, k]).

    `mask(rows, scores)`, if given, may set entries of a chunk's score block to -inf in place
    (e.g. the query itself, or items a user has already seen); `rows` is the chunk's query slice.
    """
    k = min(k, len(db))
    idx = np.empty((len(queries), k), np.int64)
    best = np.empty((len(queries), k), np.float32)
    for rows in row_chunks(len(queries), len(db), budget):
        scores = np.asarray(queries[rows] @ db.T, dtype=np.float32)
        if mask is not None:
            mask(rows, scores)
        top = tf.math.top_k(scores, k)  # C++, over rows in parallel; ties: the lower row first
        idx[rows], best[rows] = top.indices.numpy(), top.values.numpy()
    return idx, best


def sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample of at most `limit` of n rows (all of them when n <= limit)."""
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
