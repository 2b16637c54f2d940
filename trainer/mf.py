"""Matrix factorisation of the user x item matrix with TensorFlow Recommenders.

objective="mse" is the paper's objective
    min  sum_ij c_ij (p_ij - y_i.x_j)^2 + lambda (sum_j |x_j|^2 + sum_i |y_i|^2)
over the whole matrix, for implicit feedback: p_ij = 1 with confidence c_ij = 1 + alpha V_ij on the
observed pairs, p_ij = 0 with confidence 1 everywhere else. Two solvers:
  solver="als"  (default) weighted alternating least squares (Hu, Koren & Volinsky 2008): each half
                sweep solves every user's (then every item's) normal equations
                    (Y'Y + Y'(C_u - I)Y + lambda I) y_u = Y'C_u p_u
                by `cg_steps` conjugate-gradient steps warm-started from the last sweep, one row at
                a time by a numba-compiled kernel on every core, the factors staying in the TFRS
                model's tables. Exact objective, no sampling, no learning rate.
  solver="adam" stochastic gradients through the TFRS model: `negatives` uniformly sampled
                unobserved items per observed pair, with target 0 and confidence `negative_weight`.
objective="softmax" (solver adam) is TFRS's retrieval task: in-batch sampled softmax, weighted by
V_ij, with the logQ correction for item popularity.
"""

from __future__ import annotations

import io
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp
import tensorflow as tf
import tensorflow_recommenders as tfrs

from collabfeat import catalogue, examples, progress, storage, topk
from collabfeat.config import Config, MFConfig


class MatrixFactorization(tfrs.Model):
    def __init__(self, n_users: int, n_items: int, cfg: MFConfig, item_probability=None):
        super().__init__()
        self.cfg, self.n_items = cfg, n_items
        init = tf.keras.initializers.RandomNormal(stddev=0.1, seed=cfg.seed)
        self.users = tf.keras.layers.Embedding(n_users, cfg.dim, embeddings_initializer=init, name="user_factors")
        self.items = tf.keras.layers.Embedding(n_items, cfg.dim, embeddings_initializer=init, name="item_factors")
        if cfg.objective == "softmax":
            self.task = tfrs.tasks.Retrieval()
            self.log_q = tf.constant(np.log(np.maximum(item_probability, 1e-12)), tf.float32)
        else:
            self.task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.SUM)
            )

    def compute_loss(self, features, training=False):
        u = self.users(features["user_idx"])
        i = self.items(features["item_idx"])
        # lambda (|x_j|^2 + |y_i|^2) for the factors this batch touches, per observed pair.
        penalty = self.cfg.l2 * tf.reduce_mean(tf.reduce_sum(u * u + i * i, axis=1))
        if self.cfg.objective == "softmax":
            return penalty + self.task(
                u,
                i,
                sample_weight=features["rating"],
                candidate_sampling_probability=tf.exp(tf.gather(self.log_q, features["item_idx"])),
                compute_metrics=False,
            )
        batch = tf.shape(u)[0]
        neg = tf.random.uniform([batch, self.cfg.negatives], 0, self.n_items, dtype=tf.int64)
        pos_score = tf.reduce_sum(u * i, axis=1, keepdims=True)
        neg_score = tf.einsum("bd,bnd->bn", u, self.items(neg))
        labels = tf.concat([features["rating"][:, None], tf.zeros_like(neg_score)], axis=1)
        weights = tf.concat([tf.ones_like(pos_score), tf.fill(tf.shape(neg_score), self.cfg.negative_weight)], axis=1)
        loss = self.task(
            labels=tf.reshape(labels, [-1, 1]),
            predictions=tf.reshape(tf.concat([pos_score, neg_score], axis=1), [-1, 1]),
            sample_weight=tf.reshape(weights, [-1, 1]),
            compute_metrics=False,
        )
        return penalty + loss / tf.cast(batch, tf.float32)


def row_ranges(ends: np.ndarray, limit: int) -> np.ndarray:
    """Greedy ranges of consecutive rows with at most `limit` pairs each (a row with more is a
    range of its own); ends[r]: pairs of the rows before r. -> bounds: range k is [b[k], b[k+1])."""
    bounds = [0]
    while ends[-1] - ends[bounds[-1]] > limit:
        fit = int(np.searchsorted(ends, ends[bounds[-1]] + limit, "right")) - 1
        bounds.append(max(fit, bounds[-1] + 1))
    return np.array(bounds + [len(ends) - 1])


class PairBuckets:
    """One orientation of the train triples for ALS: (row, col, confidence) sorted by row, in
    buckets of consecutive rows. add() takes them in any order; a bucket is then sorted on its own.
    With one bucket they stay in memory; with more (`directory` given), each bucket is a file of
    12-byte records, sorted once into .npy files and memory-mapped at every sweep, so memory holds
    one bucket at a time, whatever the number of pairs."""

    RECORD = np.dtype([("row", np.int32), ("col", np.int32), ("conf", np.float32)])

    def __init__(self, row_counts: np.ndarray, bucket_pairs: int = 0, directory: str = ""):
        """row_counts [n_rows]: pairs per row. Buckets hold consecutive rows and at most
        bucket_pairs pairs (a row with more is a bucket of its own); 0: one bucket, in memory."""
        counts = np.asarray(row_counts, np.int64)
        self.n_rows, self.directory = len(counts), directory
        ends = np.concatenate([[0], np.cumsum(counts)])  # ends[r]: pairs of the rows before r
        self.pairs = int(ends[-1])
        self.bounds = row_ranges(ends, bucket_pairs) if bucket_pairs else np.array([0, self.n_rows])
        if len(self.bounds) > 2 and not directory:
            raise ValueError("PairBuckets: more than one bucket needs a directory")
        self.parts = [[] for _ in range(len(self.bounds) - 1)]
        self.sorted = None

    def add(self, rows, cols, conf) -> None:
        records = np.empty(len(rows), self.RECORD)
        records["row"], records["col"], records["conf"] = rows, cols, conf
        if len(self.parts) == 1:
            self.parts[0].append(records)
            return
        which = np.searchsorted(self.bounds, records["row"], "right") - 1
        order = np.argsort(which, kind="stable")
        cuts = np.searchsorted(which[order], np.arange(len(self.parts) + 1))
        for k in np.flatnonzero(np.diff(cuts)):
            with open(os.path.join(self.directory, f"bucket-{k}.bin"), "ab") as f:
                records[order[cuts[k] : cuts[k + 1]]].tofile(f)

    def _sort(self, records: np.ndarray, lo: int, hi: int):
        """(cols, confidences, indptr), sorted by row, then column. scipy's COO to CSR
        conversion sorts in linear time (8x faster than a lexsort at 4.4M pairs); it would sum a
        pair given twice, so then the lexsort keeps them apart, as add() was given them."""
        n_cols = int(records["col"].max()) + 1 if len(records) else 0
        csr = sp.csr_matrix((records["conf"], (records["row"] - lo, records["col"])), shape=(hi - lo, n_cols))
        if csr.nnz == len(records):
            return csr.indices, csr.data, csr.indptr.astype(np.int64)
        records = records[np.lexsort((records["col"], records["row"]))]
        return records["col"], records["conf"], np.searchsorted(records["row"], np.arange(lo, hi + 1))

    def buckets(self):
        """(lo, hi, cols, confidences, indptr [hi - lo + 1]) per bucket, rows sorted: row lo + r's
        pairs are indptr[r]..indptr[r + 1]."""
        if self.sorted is None:
            self.sorted = []
            for k, parts in enumerate(self.parts):
                lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
                if len(self.parts) == 1:
                    records = np.concatenate(parts) if parts else np.empty(0, self.RECORD)
                    self.parts[0] = []
                    self.sorted.append((lo, hi) + self._sort(records, lo, hi))
                    continue
                path = os.path.join(self.directory, f"bucket-{k}.bin")
                records = np.fromfile(path, self.RECORD) if os.path.exists(path) else np.empty(0, self.RECORD)
                arrays = self._sort(records, lo, hi)
                del records
                names = []
                for name, a in zip(("cols", "conf", "indptr"), arrays):
                    names.append(os.path.join(self.directory, f"bucket-{k}-{name}.npy"))
                    np.save(names[-1], a)
                if os.path.exists(path):
                    os.remove(path)
                self.sorted.append((lo, hi, names))
        for entry in self.sorted:
            if len(entry) == 3:
                lo, hi, names = entry
                yield (lo, hi) + tuple(np.load(n, mmap_mode="r") for n in names)
            else:
                yield entry


class WeightedALS:
    """The solver="als" sweeps on a MatrixFactorization's embedding tables.

    The train pairs come in PairBuckets, one per orientation (in memory: 12-byte records of int32
    row and column and float32 confidence as added, 24 bytes per pair for both orientations; once
    sorted, 8 bytes per pair per orientation, column and confidence, the rows given by an index of
    row starts; on disk beyond `mf.bucket_pairs`). Each row is
    solved on its own by a compiled kernel (_solve_rows) that reads its pairs where they lie and
    keeps nothing per pair: memory holds the factor tables, one bucket and the new rows. The rows
    are shared among the cores in ranges of about equal pairs."""

    def __init__(self, model: MatrixFactorization, user_side: PairBuckets, item_side: PairBuckets, cfg: MFConfig):
        self.model, self.cfg, self.user_side, self.item_side = model, cfg, user_side, item_side
        self.workers = len(os.sched_getaffinity(0))
        # The sweeps work on numpy copies of the model's tables, solved in place; save() writes them back.
        self.x, self.y = model.users.embeddings.numpy(), model.items.embeddings.numpy()

    def save(self) -> None:
        """The factors into the model's tables."""
        self.model.users.embeddings.assign(self.x)
        self.model.items.embeddings.assign(self.y)

    def _half(self, x: np.ndarray, y: np.ndarray, side: PairBuckets, with_loss: bool = False) -> float:
        """x's rows solved from y, in place; with_loss: -> what the observed pairs add to the
        objective at the new x (see _observed_rows), summed as the rows are solved (no pass of its own)."""
        yty = y.T @ y + np.float32(self.cfg.l2) * np.eye(y.shape[1], dtype=np.float32)
        observed = 0.0
        for lo, hi, cols, conf, indptr in side.buckets():
            part = x[lo:hi]
            observed += self._rows(
                _solve_rows, hi - lo, indptr, cols, y, part, yty, conf, self.cfg.cg_steps, with_loss, part
            )
        return observed

    def _rows(self, kernel, n_rows, indptr, cols, y, *args) -> float:
        """kernel(rows r0..r1, indptr, cols, y, *args) over a bucket's rows in ranges of about
        equal pairs, on every core; -> the sum of what the ranges return, in row order."""
        indptr, cols = np.asarray(indptr, np.int64), np.asarray(cols)
        if len(cols) and (int(cols.min()) < 0 or int(cols.max()) >= len(y)):
            raise ValueError(f"ALS: a pair's column is outside the {len(y)} rows of the other side's factors")
        bounds = row_ranges(indptr, max(len(cols) // (8 * self.workers), 1)) if n_rows else [0]
        with ThreadPoolExecutor(self.workers) as pool:  # the kernels release the GIL
            parts = [pool.submit(kernel, r0, r1, indptr, cols, y, *args) for r0, r1 in zip(bounds[:-1], bounds[1:])]
            return float(sum(part.result() for part in parts))

    def sweep(self) -> float:
        """One ALS iteration: users from items, then items from users; returns the objective
        (the weighted squared loss over the whole matrix plus the penalty, per observed pair)."""
        self._half(self.x, self.y, self.user_side)
        return self._objective(self._half(self.y, self.x, self.item_side, with_loss=True))

    def objective(self) -> float:
        """The objective at the current factors, in a pass over the pairs of its own."""
        observed = 0.0
        for lo, hi, cols, conf, indptr in self.user_side.buckets():
            observed += self._rows(_observed_rows, hi - lo, indptr, cols, self.y, self.x[lo:hi], conf)
        return self._objective(observed)

    def _objective(self, observed: float) -> float:
        """The objective per observed pair from the observed pairs' part of it (see _observed_rows)."""
        xtx, yty = (self.x.T @ self.x).astype(np.float64), (self.y.T @ self.y).astype(np.float64)
        everywhere, penalty = np.sum(xtx * yty), self.cfg.l2 * (np.trace(xtx) + np.trace(yty))
        return float(observed + everywhere + penalty) / max(self.user_side.pairs, 1)


# The kernels: one row at a time, in cache, as implicit's are; reassociated sums (vectorised), with
# NaN and infinity keeping their meaning.
_FAST = {"reassoc", "contract", "arcp", "nsz"}


def _kernel(fn):
    """fn compiled by numba, without the GIL, kept in numba's on-disk cache (a few seconds saved in
    every later process); where no cache directory is writable, compiled in every process."""
    try:
        return numba.njit(nogil=True, cache=True, fastmath=_FAST)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, fastmath=_FAST)(fn)


@_kernel
def _dot(a, b):
    total = np.float32(0.0)
    for i in range(a.shape[0]):
        total += a[i] * b[i]
    return total


@_kernel
def _add(out, scale, a):
    """out += scale * a, in place."""
    for i in range(a.shape[0]):
        out[i] += scale * a[i]


@_kernel
def _solve_rows(r0, r1, indptr, cols, y, x, yty, conf, cg_steps, with_loss, out):
    """Rows r0..r1 of x [n, d] solved from y [m, d] into out: `cg_steps` conjugate-gradient steps
    on each row's normal equations (yty = Y'Y + lambda I), from its current value. Row u's pairs are
    indptr[u]..indptr[u + 1] (cols into y, confidences). -> with_loss: what the rows' pairs add to
    the objective at the new rows (see _observed_rows); else 0."""
    d = x.shape[1]
    res, p, ap = np.empty(d, np.float32), np.empty(d, np.float32), np.empty(d, np.float32)
    one = np.float32(1.0)
    total = 0.0
    for u in range(r0, r1):
        xu = out[u]
        xu[:] = x[u]
        # res = b - A x = sum_j c_j y_j - (yty x + sum_j (c_j - 1)(y_j.x) y_j)
        for a in range(d):
            res[a] = -_dot(yty[a], xu)
        for k in range(indptr[u], indptr[u + 1]):
            yj, c = y[cols[k]], conf[k]
            _add(res, c - (c - one) * _dot(yj, xu), yj)
        p[:] = res
        rs = _dot(res, res)
        for _ in range(cg_steps):
            if rs <= 1e-20:
                break
            for a in range(d):
                ap[a] = _dot(yty[a], p)
            for k in range(indptr[u], indptr[u + 1]):
                yj = y[cols[k]]
                _add(ap, (conf[k] - one) * _dot(yj, p), yj)
            step = rs / max(_dot(p, ap), np.float32(1e-30))
            _add(xu, step, p)
            _add(res, -step, ap)
            rs_new = _dot(res, res)
            beta = rs_new / rs
            for a in range(d):
                p[a] = res[a] + beta * p[a]
            rs = rs_new
        if with_loss:
            total += _pairs_loss(indptr[u], indptr[u + 1], cols, y, xu, conf)
    return total


@_kernel
def _pairs_loss(k0, k1, cols, y, xu, conf):
    """sum over pairs k0..k1 of one row xu of c (1 - s)^2 - s^2, s = y_j.xu, in float64."""
    total = 0.0
    for k in range(k0, k1):
        s = np.float64(_dot(y[cols[k]], xu))
        total += conf[k] * (1.0 - s) ** 2 - s * s
    return total


@_kernel
def _observed_rows(r0, r1, indptr, cols, y, x, conf):
    """sum over the pairs of rows r0..r1 of c (1 - x.y)^2 - (x.y)^2: what they add to the loss over
    the whole matrix, whose every entry counts (x.y)^2 once (tr(X'X Y'Y))."""
    total = 0.0
    for u in range(r0, r1):
        total += _pairs_loss(indptr[u], indptr[u + 1], cols, y, x[u], conf)
    return total


@dataclass
class Factors:
    users: np.ndarray  # [n_users, dim]
    items: np.ndarray  # [n_items, dim]
    losses: list[float]


def fit(
    data: tf.data.Dataset, n_users: int, n_items: int, item_counts: np.ndarray, cfg: MFConfig, callback=None
) -> Factors:
    """SGD (objective softmax, or mse with solver adam): fits the factors on a stream of batches
    {"user_idx", "item_idx", "rating"} (0-based indices), re-read every epoch; item_counts [n_items]:
    training pairs per item (logQ)."""
    counts = np.asarray(item_counts, np.float64)
    if counts.sum() == 0:
        raise ValueError("no interactions to factorise (all rows were filtered out?)")
    tf.keras.utils.set_random_seed(cfg.seed)
    model = MatrixFactorization(n_users, n_items, cfg, item_probability=counts / counts.sum())
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))

    def factors(losses=()):
        return Factors(model.users.embeddings.numpy(), model.items.embeddings.numpy(), list(losses))

    hooks = [progress.keras_callback("MF epochs")]
    if callback is not None:
        hooks.append(tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: callback(epoch + 1, factors())))
    hist = model.fit(data, epochs=cfg.epochs, verbose=0, callbacks=hooks)
    return factors(float(x) for x in hist.history["loss"])


def uses_als(cfg: MFConfig) -> bool:
    return cfg.objective == "mse" and cfg.solver == "als"


def train(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    rating: np.ndarray,
    n_users: int,
    n_items: int,
    cfg: MFConfig,
    callback=None,
) -> Factors:
    """Fits the factors on triples held in memory (0-based indices). solver="als" needs them so
    (24 bytes per pair); SGD streams them through fit(). callback(sweep, factors) is
    called after every ALS sweep or SGD epoch (the benchmark's trade-off curves)."""
    if len(user_idx) == 0:
        raise ValueError("no interactions to factorise (all rows were filtered out?)")
    if not uses_als(cfg):
        data = tf.data.Dataset.from_tensor_slices(
            {
                "user_idx": user_idx.astype(np.int64),
                "item_idx": item_idx.astype(np.int64),
                "rating": rating.astype(np.float32),
            }
        )
        data = data.shuffle(len(user_idx), seed=cfg.seed, reshuffle_each_iteration=True).batch(cfg.batch_size)
        return fit(data, n_users, n_items, np.bincount(item_idx, minlength=n_items), cfg, callback)
    user_side = PairBuckets(np.bincount(user_idx, minlength=n_users))
    item_side = PairBuckets(np.bincount(item_idx, minlength=n_items))
    conf = confidence(rating, cfg)
    user_side.add(user_idx, item_idx, conf)
    item_side.add(item_idx, user_idx, conf)
    return fit_als(user_side, item_side, cfg, callback)


def confidence(rating: np.ndarray, cfg: MFConfig) -> np.ndarray:
    """c = 1 + alpha V on the observed pairs (every other entry of the matrix has c = 1)."""
    return (1.0 + cfg.alpha * np.asarray(rating, np.float32)).astype(np.float32)


def fit_als(user_side: PairBuckets, item_side: PairBuckets, cfg: MFConfig, callback=None) -> Factors:
    """Weighted ALS from the train pairs in both orientations (see PairBuckets), cfg.epochs sweeps."""
    if user_side.pairs == 0:
        raise ValueError("no interactions to factorise (all rows were filtered out?)")
    tf.keras.utils.set_random_seed(cfg.seed)
    model = MatrixFactorization(user_side.n_rows, item_side.n_rows, cfg)
    model.users(tf.zeros([1], tf.int64)), model.items(tf.zeros([1], tf.int64))  # build the tables
    als = WeightedALS(model, user_side, item_side, cfg)
    losses = []
    for sweep in range(cfg.epochs):
        losses.append(als.sweep())
        progress.update("MF ALS sweeps", sweep + 1, cfg.epochs, "sweeps")
        if callback is not None:
            callback(sweep + 1, Factors(als.x.copy(), als.y.copy(), losses))
    als.save()
    return Factors(model.users.embeddings.numpy(), model.items.embeddings.numpy(), losses)


def popularity(train_items: np.ndarray, n_users: int, n_items: int) -> Factors:
    """The reference ranking: every user ranks items by their number of training pairs."""
    return popularity_from_counts(np.bincount(train_items, minlength=n_items), n_users)


def popularity_from_counts(item_counts: np.ndarray, n_users: int) -> Factors:
    return Factors(np.ones((n_users, 1), np.float32), np.asarray(item_counts, np.float32)[:, None], [])


def _by_user(users: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs of `users` (sorted) -> their items grouped by user, and each user's offsets."""
    rows = np.searchsorted(users, pairs[:, 0])
    order = np.argsort(rows, kind="stable")
    return pairs[order, 1], np.searchsorted(rows[order], np.arange(len(users) + 1))


def _recall_of(rank, train_pairs: np.ndarray, eval_pairs: np.ndarray, k: int) -> float:
    """Mean over users with held-out pairs of |top-k ∩ held-out| / min(k, |held-out|), each user's
    top k from rank(users, seen) (seen(r): the training items of users[r], which it leaves out)."""
    if len(eval_pairs) == 0:
        return float("nan")
    eval_pairs, train_pairs = np.asarray(eval_pairs, np.int64), np.asarray(train_pairs, np.int64)
    users = np.unique(eval_pairs[:, 0])
    held_items, held_at = _by_user(users, eval_pairs)
    seen_items, seen_at = _by_user(users, train_pairs[np.isin(train_pairs[:, 0], users)])
    top = rank(users, lambda r: seen_items[seen_at[r] : seen_at[r + 1]])
    recalls = []
    for r in range(len(users)):
        held = np.unique(held_items[held_at[r] : held_at[r + 1]])
        recalls.append(np.isin(top[r], held).sum() / min(k, len(held)))
    return float(np.mean(recalls))


def recall_at_k(factors: Factors, train_pairs: np.ndarray, eval_pairs: np.ndarray, k: int) -> float:
    """Mean over users with held-out pairs of |top-k ∩ held-out| / min(k, |held-out|),
    ranking all items by y_i.x_j and excluding the user's training items (chunked, bounded memory).
    The pipeline passes the pairs of a seeded sample of users (mf.eval_users)."""

    def rank(users, seen):
        def hide_seen(rows, scores):
            for r in range(rows.start, rows.stop):
                scores[r - rows.start, seen(r)] = -np.inf

        return topk.top_k(factors.users[users], factors.items, k, mask=hide_seen)[0]

    return _recall_of(rank, train_pairs, eval_pairs, k)


def popularity_recall_at_k(item_counts: np.ndarray, train_pairs: np.ndarray, eval_pairs: np.ndarray, k: int) -> float:
    """recall_at_k of ranking every user's items by their training pairs (popularity_from_counts; of
    equal counts, the lower item first, as top_k orders ties): one ranking for all, so each user's
    top k is the first k of it they have not seen, found among its first k + (their training items)."""
    ranking = np.argsort(-np.asarray(item_counts, np.float32), kind="stable")

    def rank(users, seen):
        top = []
        for r in range(len(users)):
            first = ranking[: k + len(seen(r))]
            top.append(first[~np.isin(first, seen(r))][:k])
        return top

    return _recall_of(rank, train_pairs, eval_pairs, k)


def neighbour_agreement(
    vectors: np.ndarray, labels: np.ndarray, k: int = 10, max_queries: int = 0, seed: int = 0
) -> float:
    """Share of each vector's k nearest neighbours (cosine, itself excluded) that have its label,
    over all vectors or a seeded sample of `max_queries` of them (chunked, bounded memory)."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    queries = topk.sample(len(v), max_queries, seed)

    def hide_self(rows, scores):
        scores[np.arange(rows.stop - rows.start), queries[rows]] = -np.inf

    top, _ = topk.top_k(v[queries], v, k, mask=hide_self)
    return float((labels[top] == labels[queries][:, None]).mean())


def save(factors: Factors, user_ids: list[str], item_ids: list[str], path: str) -> None:
    """An .npz file at `path` (a local path or a URI)."""

    arrays = dict(
        users=factors.users,
        items=factors.items,
        user_ids=np.array(user_ids, dtype=object),
        item_ids=np.array(item_ids, dtype=object),
    )
    if storage.is_local(path):
        np.savez(path, **arrays)
        return
    buf = io.BytesIO()  # zip wants to seek; a URI's file may not
    np.savez(buf, **arrays)
    with storage.open(path, "wb") as f:
        f.write(buf.getvalue())


def load(path: str) -> dict[str, np.ndarray]:
    """{"users", "items", "user_ids", "item_ids"} as saved by save()."""

    if storage.is_local(path):
        source = path
    else:
        with storage.open(path, "rb") as f:
            source = io.BytesIO(f.read())
    with np.load(source, allow_pickle=True) as z:
        return {k: z[k] for k in z.files}


PAIR_SPEC = {"user_idx": tf.int64, "item_idx": tf.int64, "rating": tf.float32}  # the Transform's output


def train_on_examples(
    transformed_uri: str,
    user_ids: list[str],
    item_ids: list[str],
    cfg: Config,
    out_path: str,
    catalogue_uri: str | None = None,
) -> dict:
    """The MFTrainer component's work: the Transform's weighted pairs (Examples under transformed_uri, splits
    "train" and "eval", indexed by the vocabularies user_ids and item_ids) -> user and item factors, saved
    at out_path (save()). Weighted ALS (the default solver) holds up to mf.bucket_pairs train pairs in
    memory (24 bytes each); more go to row-range bucket files on local disk. The SGD solvers stream the
    pairs every epoch. Returns the report: sizes, losses, held-out recall@k against ranking by popularity
    and, with a catalogue (Examples with a "catalogue" split), how often an item factor's 10 nearest
    neighbours share its facet (category, style)."""
    n_users, n_items = len(user_ids), len(item_ids)
    # One streaming pass per split: item counts, and the pairs of a seeded sample of users for recall@k.
    sampled = np.zeros(n_users + 1, bool)
    sampled[topk.sample(n_users, cfg.mf.eval_users, cfg.mf.seed)] = True
    counts, user_counts = np.zeros(n_items + 1, np.int64), np.zeros(n_users + 1, np.int64)
    pairs, totals, cold = {}, {}, 0
    for split in ("train", "eval"):
        parts, totals[split] = [], 0
        for b in examples.column_batches(transformed_uri, split, PAIR_SPEC):
            u, i = b["user_idx"], b["item_idx"]
            known = (u < n_users) & (i < n_items)  # eval pairs outside the train vocabularies are cold
            totals[split] += int(known.sum())
            cold += int((~known).sum())
            if split == "train":
                counts += np.bincount(i, minlength=n_items + 1)
                user_counts += np.bincount(u, minlength=n_users + 1)
            keep = known & sampled[u]
            parts.append(np.c_[u[keep], i[keep]])
        pairs[split] = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    extra: dict = {}
    if uses_als(cfg.mf):  # a second pass puts the train pairs in buckets of rows, both ways
        with tempfile.TemporaryDirectory(prefix="collabfeat-als-") as tmp:
            for side in ("users", "items"):
                os.makedirs(os.path.join(tmp, side))
            by_user = PairBuckets(user_counts, cfg.mf.bucket_pairs, os.path.join(tmp, "users"))
            by_item = PairBuckets(counts, cfg.mf.bucket_pairs, os.path.join(tmp, "items"))
            for b in examples.column_batches(transformed_uri, "train", PAIR_SPEC):
                conf = confidence(b["rating"], cfg.mf)
                by_user.add(b["user_idx"], b["item_idx"], conf)
                by_item.add(b["item_idx"], b["user_idx"], conf)
            factors = fit_als(by_user, by_item, cfg.mf)
        extra = {
            "als_buckets": {"users": len(by_user.parts), "items": len(by_item.parts)},
            "als_bucket_pairs": cfg.mf.bucket_pairs,
        }
    else:
        data = examples.dataset(
            transformed_uri, "train", PAIR_SPEC, cfg.mf.batch_size, shuffle=cfg.mf.shuffle_buffer, seed=cfg.mf.seed
        )
        factors = fit(data, n_users + 1, n_items + 1, counts, cfg.mf)
    factors = Factors(factors.users[:n_users], factors.items[:n_items], factors.losses)
    k = cfg.mf.recall_k
    report = {
        "users": n_users,
        "items": n_items,
        "train_pairs": totals["train"],
        "eval_pairs": totals["eval"],
        "eval_pairs_cold": cold,
        "losses": factors.losses,
        "recall_users": int(len(np.unique(pairs["eval"][:, 0]))),
        "recall_users_bound": cfg.mf.eval_users,
        f"recall@{k}": recall_at_k(factors, pairs["train"], pairs["eval"], k),
        f"recall@{k}_popularity": popularity_recall_at_k(counts[:n_items], pairs["train"], pairs["eval"], k),
        **extra,
    }
    if report[f"recall@{k}"] <= report[f"recall@{k}_popularity"]:
        progress.warn(
            f"MFTrainer: the factors' held-out recall@{k} {report[f'recall@{k}']:.3f} does not beat "
            f"ranking by popularity ({report[f'recall@{k}_popularity']:.3f})"
        )
    if catalogue_uri is not None:
        agreement = facet_agreement(factors.items, item_ids, catalogue_uri, cfg.mf)
        if agreement:
            report["agreement@10"] = agreement
    save(factors, user_ids, item_ids, out_path)
    return report


def facet_agreement(items: np.ndarray, item_ids: list[str], catalogue_uri: str, cfg: MFConfig) -> dict:
    """facet name -> how often an item factor's 10 nearest neighbours share its value, with the chance
    level, for each facet of the catalogue (catalogue.FACET_NAMES) that more than 10 items have."""
    out = {}
    ids = list(catalogue.read_labels(catalogue_uri, "catalogue"))
    for facet, values in catalogue.read_facets(catalogue_uri, "catalogue").items():
        of = dict(zip(ids, values.tolist()))
        lab = np.array([of.get(i, -1) for i in item_ids])
        have = lab >= 0
        if have.sum() > 10:
            lab = lab[have]
            out[catalogue.FACET_NAMES[facet]] = {
                "value": neighbour_agreement(items[have], lab, 10, cfg.agreement_items, cfg.seed),
                "items": int(min(have.sum(), cfg.agreement_items or have.sum())),
                "chance": float(((np.bincount(lab) / len(lab)) ** 2).sum()),
            }
    return out
