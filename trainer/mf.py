"""Matrix factorisation of the user x item matrix with TensorFlow Recommenders.

objective="mse" is the paper's objective
    min  sum_ij c_ij (p_ij - y_i.x_j)^2 + lambda (sum_j |x_j|^2 + sum_i |y_i|^2)
over the whole matrix, for implicit feedback: p_ij = 1 with confidence c_ij = 1 + alpha V_ij on the
observed pairs, p_ij = 0 with confidence 1 everywhere else. Two solvers:
  solver="als"  (default) weighted alternating least squares (Hu, Koren & Volinsky 2008): each half
                sweep solves every user's (then every item's) normal equations
                    (Y'Y + Y'(C_u - I)Y + lambda I) y_u = Y'C_u p_u
                by `cg_steps` conjugate-gradient steps warm-started from the last sweep, with TF ops
                over chunks of the observed pairs. Exact objective, no sampling, no learning rate.
  solver="adam" stochastic gradients through the TFRS model: `negatives` uniformly sampled
                unobserved items per observed pair, with target 0 and confidence `negative_weight`.
objective="softmax" (solver adam) is TFRS's retrieval task: in-batch sampled softmax, weighted by
V_ij, with the logQ correction for item popularity.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass

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
        """(local rows, cols, confidences, indptr), sorted by row, then column. scipy's COO to CSR
        conversion sorts in linear time (8x faster than a lexsort at 4.4M pairs); it would sum a
        pair given twice, so then the lexsort keeps them apart, as add() was given them."""
        n_cols = int(records["col"].max()) + 1 if len(records) else 0
        csr = sp.csr_matrix((records["conf"], (records["row"] - lo, records["col"])), shape=(hi - lo, n_cols))
        if csr.nnz == len(records):
            indptr = csr.indptr.astype(np.int64)
            return np.repeat(np.arange(hi - lo, dtype=np.int32), np.diff(indptr)), csr.indices, csr.data, indptr
        records = records[np.lexsort((records["col"], records["row"]))]
        indptr = np.searchsorted(records["row"], np.arange(lo, hi + 1))
        return records["row"] - lo, records["col"], records["conf"], indptr

    def buckets(self):
        """(lo, hi, local rows, cols, confidences, indptr [hi - lo + 1]) per bucket, rows sorted."""
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
                for name, a in zip(("rows", "cols", "conf", "indptr"), arrays):
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
    """The solver="als" sweeps on a MatrixFactorization's embedding tables, in TF ops.

    The train pairs come in PairBuckets, one per orientation (in memory: int32 row and column,
    float32 confidence, 24 bytes per pair in all; on disk beyond `mf.bucket_pairs`). Within a bucket,
    rows are solved in blocks whose pairs number at most `chunk_pairs` (a row with more pairs is a
    block of its own, its pairs summed `chunk_pairs` at a time), so every intermediate is bounded by
    `chunk_pairs` and the factor tables."""

    def __init__(self, model: MatrixFactorization, user_side: PairBuckets, item_side: PairBuckets, cfg: MFConfig):
        self.model, self.cfg, self.user_side, self.item_side = model, cfg, user_side, item_side

    def _blocks(self, indptr):
        """Row blocks of at most chunk_pairs pairs: block b holds rows [starts[b], starts[b+1])."""
        starts = row_ranges(np.asarray(indptr), self.cfg.chunk_pairs)
        return tf.constant(starts.astype(np.int32)), tf.constant(np.asarray(indptr)[starts].astype(np.int32))

    def _half(self, x, y, side: PairBuckets, reg, steps, with_loss: bool = False) -> float:
        """x's rows solved from y; with_loss: -> what the observed pairs add to the objective at
        the new x (see _observed_loss), summed as the rows are solved (no pass of its own)."""
        new = np.empty(tuple(x.shape), np.float32)
        observed = 0.0
        for lo, hi, rows, cols, conf, indptr in side.buckets():
            if hi == lo:
                continue
            solved, loss = _solve(
                x[lo:hi],
                y,
                tf.constant(rows),
                tf.constant(cols),
                tf.constant(conf),
                *self._blocks(indptr),
                reg,
                steps,
                tf.constant(self.cfg.chunk_pairs),
                tf.constant(with_loss),
            )
            new[lo:hi] = solved.numpy()
            observed += float(loss)
        x.assign(new)
        return observed

    def sweep(self) -> float:
        """One ALS iteration: users from items, then items from users; returns the objective
        (the weighted squared loss over the whole matrix plus the penalty, per observed pair)."""
        x, y = self.model.users.embeddings, self.model.items.embeddings
        reg, steps = tf.constant(self.cfg.l2, tf.float32), tf.constant(self.cfg.cg_steps)
        self._half(x, y, self.user_side, reg, steps)
        return self._objective(self._half(y, x, self.item_side, reg, steps, with_loss=True))

    def objective(self) -> float:
        """The objective at the current factors, in a pass over the pairs of its own."""
        x, y = self.model.users.embeddings, self.model.items.embeddings
        observed = 0.0
        chunk = tf.constant(self.cfg.chunk_pairs)
        for lo, hi, rows, cols, conf, indptr in self.user_side.buckets():
            observed += float(
                _observed_loss(x[lo:hi], y, tf.constant(rows), tf.constant(cols), tf.constant(conf), chunk)
            )
        return self._objective(observed)

    def _objective(self, observed: float) -> float:
        """The objective per observed pair from the observed pairs' part of it (see _observed_loss)."""
        x, y = self.model.users.embeddings, self.model.items.embeddings
        everywhere = tf.reduce_sum(tf.matmul(x, x, transpose_a=True) * tf.matmul(y, y, transpose_a=True))
        penalty = self.cfg.l2 * (tf.reduce_sum(x * x) + tf.reduce_sum(y * y))
        return (observed + float(everywhere) + float(penalty)) / max(self.user_side.pairs, 1)


_SIDE = [
    tf.TensorSpec([None, None], tf.float32),
    tf.TensorSpec([None, None], tf.float32),
    tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([None], tf.float32),
    tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([], tf.float32),
]


@tf.function(input_signature=_SIDE + [tf.TensorSpec([], tf.int32)] * 2 + [tf.TensorSpec([], tf.bool)])
def _solve(x, y, rows, cols, conf, row_starts, pair_starts, reg, cg_steps, chunk, with_loss):
    """New x [n, d] from y [m, d] and the pairs (rows into x, sorted; cols into y; confidence):
    `cg_steps` conjugate-gradient steps on every row's normal equations from x's current value,
    one block of rows (row_starts, pair_starts) at a time. -> (new x, with_loss: what the pairs
    add to the objective at the new x, as _observed_loss sums it; else 0).

    A block's first `chunk` pairs (all of them but for a heavy row's block) keep their gathered y
    and their scores y.x, which each step updates from the y.p it computes anyway: the loss at the
    new x then costs no pass over them of its own."""
    d = tf.shape(x)[1]
    yty = tf.matmul(y, y, transpose_a=True) + reg * tf.eye(d)
    blocks = tf.TensorArray(tf.float32, size=tf.shape(row_starts)[0] - 1, infer_shape=False)
    loss = tf.constant(0.0, tf.float64)
    for b in tf.range(tf.shape(row_starts)[0] - 1):
        r0, r1 = row_starts[b], row_starts[b + 1]
        p0, p1 = pair_starts[b], pair_starts[b + 1]
        q = tf.minimum(p0 + chunk, p1)  # the first chunk: every block but a heavy row's is all in it
        first, first_rows, first_conf = _chunk(y, rows, cols, conf, r0, p0, q)

        def observed(p, target):
            """per row: sum_j (c_j - 1)(y_j.p) y_j - target * sum_j c_j y_j over the block's pairs, and
            y_j.p on the first chunk's pairs. A row with more pairs than `chunk` (a popular item) is
            summed in parts, so no intermediate exceeds [chunk, d]."""
            out, s = _observed(p, target, first, first_rows, first_conf, r1 - r0)
            for q0 in tf.range(q, p1, chunk):
                tf.autograph.experimental.set_loop_options(parallel_iterations=1)  # one chunk live at a time
                yg, local, c = _chunk(y, rows, cols, conf, r0, q0, tf.minimum(q0 + chunk, p1))
                out += _observed(p, target, yg, local, c, r1 - r0)[0]
            return out, s

        xb = x[r0:r1]
        known, score = observed(xb, 1.0)  # score: y.x on the first chunk's pairs, kept up to date below
        res = -(tf.matmul(xb, yty) + known)  # b - A x
        p, rs = res, tf.reduce_sum(res * res, axis=1, keepdims=True)
        for _ in tf.range(cg_steps):
            known, along = observed(p, 0.0)
            ap = tf.matmul(p, yty) + known
            live = rs > 1e-20
            step = tf.where(live, rs / tf.maximum(tf.reduce_sum(p * ap, axis=1, keepdims=True), 1e-30), 0.0)
            xb += step * p
            score += tf.gather(step[:, 0], first_rows) * along
            res -= step * ap
            rs_new = tf.reduce_sum(res * res, axis=1, keepdims=True)
            p = res + tf.where(live, rs_new / tf.maximum(rs, 1e-30), 0.0) * p
            rs = rs_new
        blocks = blocks.write(b, xb)
        if with_loss:
            loss += _pairs_loss(score, first_conf)
            for q0 in tf.range(q, p1, chunk):
                tf.autograph.experimental.set_loop_options(parallel_iterations=1)
                yg, local, c = _chunk(y, rows, cols, conf, r0, q0, tf.minimum(q0 + chunk, p1))
                loss += _pairs_loss(tf.reduce_sum(yg * tf.gather(xb, local), axis=1), c)
    return blocks.concat(), loss


def _chunk(y, rows, cols, conf, r0, q0, q1):
    """Pairs q0..q1 of a block starting at row r0: (y gathered, rows local to the block, confidences)."""
    return tf.gather(y, cols[q0:q1]), rows[q0:q1] - r0, conf[q0:q1]


def _observed(p, target, yg, local, c, n_rows):
    """One chunk's part of _solve's observed(): ([n_rows, d] sums, y.p per pair)."""
    s = tf.reduce_sum(yg * tf.gather(p, local), axis=1)
    summed = tf.math.segment_sum(((c - 1.0) * s - target * c)[:, None] * yg, local)  # rows are sorted
    return tf.pad(summed, [[0, n_rows - tf.shape(summed)[0]], [0, 0]]), s


def _pairs_loss(s, conf):
    """sum of c (1 - s)^2 - s^2 over pairs of scores s = x.y and confidences c, in float64 (see
    _observed_loss)."""
    return tf.cast(tf.reduce_sum(conf * (1.0 - s) ** 2 - s * s), tf.float64)


@tf.function(input_signature=_SIDE[:5] + [tf.TensorSpec([], tf.int32)])
def _observed_loss(x, y, rows, cols, conf, chunk):
    """sum over the observed pairs of c (1 - x.y)^2 - (x.y)^2: what they add to the loss over the
    whole matrix, whose every entry counts (x.y)^2 once (tr(X'X Y'Y)); `chunk` pairs at a time, so
    the gathered factors ([chunk, d] each) stay bounded, not [pairs, d]."""
    total = tf.constant(0.0, tf.float64)
    for p0 in tf.range(0, tf.shape(rows)[0], chunk):
        tf.autograph.experimental.set_loop_options(parallel_iterations=1)
        p1 = tf.minimum(p0 + chunk, tf.shape(rows)[0])
        total += _pairs_loss(tf.reduce_sum(tf.gather(x, rows[p0:p1]) * tf.gather(y, cols[p0:p1]), axis=1), conf[p0:p1])
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
            callback(sweep + 1, Factors(model.users.embeddings.numpy(), model.items.embeddings.numpy(), losses))
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
