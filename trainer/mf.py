"""Matrix factorisation of the user x item matrix with TensorFlow Recommenders.

objective="mse" is the paper's objective
    min  sum_observed c (V_ij - y_i.x_j)^2 + lambda (|x_j|^2 + |y_i|^2)
made fit for implicit feedback by `negatives` uniformly sampled unobserved items per observed
pair, with target 0 and confidence `negative_weight` (the sampled form of weighted ALS).
objective="softmax" is TFRS's retrieval task: in-batch sampled softmax, weighted by V_ij, with
the logQ correction for item popularity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from collabfeat import topk

from collabfeat.config import MFConfig


class MatrixFactorization(tfrs.Model):
    def __init__(self, n_users: int, n_items: int, cfg: MFConfig, item_probability=None):
        super().__init__()
        self.cfg, self.n_items = cfg, n_items
        init = tf.keras.initializers.RandomNormal(stddev=0.1, seed=cfg.seed)
        self.users = tf.keras.layers.Embedding(n_users, cfg.dim, embeddings_initializer=init,
                                               name="user_factors")
        self.items = tf.keras.layers.Embedding(n_items, cfg.dim, embeddings_initializer=init,
                                               name="item_factors")
        if cfg.objective == "softmax":
            self.task = tfrs.tasks.Retrieval()
            self.log_q = tf.constant(np.log(np.maximum(item_probability, 1e-12)), tf.float32)
        else:
            self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(
                reduction=tf.keras.losses.Reduction.SUM))

    def compute_loss(self, features, training=False):
        u = self.users(features["user_idx"])
        i = self.items(features["item_idx"])
        # lambda (|x_j|^2 + |y_i|^2) for the factors this batch touches, per observed pair.
        penalty = self.cfg.l2 * tf.reduce_mean(tf.reduce_sum(u * u + i * i, axis=1))
        if self.cfg.objective == "softmax":
            return penalty + self.task(u, i, sample_weight=features["rating"],
                             candidate_sampling_probability=tf.exp(tf.gather(self.log_q, features["item_idx"])),
                             compute_metrics=False)
        batch = tf.shape(u)[0]
        neg = tf.random.uniform([batch, self.cfg.negatives], 0, self.n_items, dtype=tf.int64)
        pos_score = tf.reduce_sum(u * i, axis=1, keepdims=True)
        neg_score = tf.einsum("bd,bnd->bn", u, self.items(neg))
        labels = tf.concat([features["rating"][:, None], tf.zeros_like(neg_score)], axis=1)
        weights = tf.concat([tf.ones_like(pos_score),
                             tf.fill(tf.shape(neg_score), self.cfg.negative_weight)], axis=1)
        loss = self.task(labels=tf.reshape(labels, [-1, 1]), predictions=tf.reshape(
            tf.concat([pos_score, neg_score], axis=1), [-1, 1]),
            sample_weight=tf.reshape(weights, [-1, 1]), compute_metrics=False)
        return penalty + loss / tf.cast(batch, tf.float32)


@dataclass
class Factors:
    users: np.ndarray        # [n_users, dim]
    items: np.ndarray        # [n_items, dim]
    losses: List[float]


def fit(data: tf.data.Dataset, n_users: int, n_items: int, item_counts: np.ndarray, cfg: MFConfig) -> Factors:
    """Fits the factors on a stream of batches {"user_idx", "item_idx", "rating"} (0-based indices),
    re-read every epoch; item_counts [n_items]: training pairs per item (for the softmax's logQ)."""
    counts = np.asarray(item_counts, np.float64)
    if counts.sum() == 0:
        raise ValueError("no interactions to factorise (all rows were filtered out?)")
    tf.keras.utils.set_random_seed(cfg.seed)
    model = MatrixFactorization(n_users, n_items, cfg, item_probability=counts / counts.sum())
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
    hist = model.fit(data, epochs=cfg.epochs, verbose=0)
    return Factors(users=model.users.embeddings.numpy(), items=model.items.embeddings.numpy(),
                   losses=[float(x) for x in hist.history["loss"]])


def train(user_idx: np.ndarray, item_idx: np.ndarray, rating: np.ndarray,
          n_users: int, n_items: int, cfg: MFConfig) -> Factors:
    """fit() on triples held in memory (tests, benchmarks); the pipeline streams its pairs instead."""
    if len(user_idx) == 0:
        raise ValueError("no interactions to factorise (all rows were filtered out?)")
    data = tf.data.Dataset.from_tensor_slices({
        "user_idx": user_idx.astype(np.int64), "item_idx": item_idx.astype(np.int64),
        "rating": rating.astype(np.float32)})
    data = data.shuffle(len(user_idx), seed=cfg.seed, reshuffle_each_iteration=True).batch(cfg.batch_size)
    return fit(data, n_users, n_items, np.bincount(item_idx, minlength=n_items), cfg)


def popularity(train_items: np.ndarray, n_users: int, n_items: int) -> Factors:
    """The reference ranking: every user ranks items by their number of training pairs."""
    return popularity_from_counts(np.bincount(train_items, minlength=n_items), n_users)


def popularity_from_counts(item_counts: np.ndarray, n_users: int) -> Factors:
    return Factors(np.ones((n_users, 1), np.float32), np.asarray(item_counts, np.float32)[:, None], [])


def recall_at_k(factors: Factors, train_pairs: np.ndarray, eval_pairs: np.ndarray, k: int) -> float:
    """Mean over users with held-out pairs of |top-k ∩ held-out| / min(k, |held-out|),
    ranking all items by y_i.x_j and excluding the user's training items (chunked, bounded memory).
    The pipeline passes the pairs of a seeded sample of users (mf.eval_users)."""
    if len(eval_pairs) == 0:
        return float("nan")
    eval_pairs, train_pairs = np.asarray(eval_pairs, np.int64), np.asarray(train_pairs, np.int64)
    users = np.unique(eval_pairs[:, 0])
    train_pairs = train_pairs[np.isin(train_pairs[:, 0], users)]

    def pairs_by_row(pairs):   # -> row of users, items sorted by that row, and each row's offsets
        rows = np.searchsorted(users, pairs[:, 0])
        order = np.argsort(rows, kind="stable")
        return pairs[order, 1], np.searchsorted(rows[order], np.arange(len(users) + 1))

    held_items, held_at = pairs_by_row(eval_pairs)
    seen_items, seen_at = pairs_by_row(train_pairs)

    def hide_seen(rows, scores):
        for r in range(rows.start, rows.stop):
            scores[r - rows.start, seen_items[seen_at[r]:seen_at[r + 1]]] = -np.inf

    top, _ = topk.top_k(factors.users[users], factors.items, k, mask=hide_seen)
    recalls = []
    for r in range(len(users)):
        held = np.unique(held_items[held_at[r]:held_at[r + 1]])
        recalls.append(np.isin(top[r], held).sum() / min(k, len(held)))
    return float(np.mean(recalls))


def neighbour_agreement(vectors: np.ndarray, labels: np.ndarray, k: int = 10,
                        max_queries: int = 0, seed: int = 0) -> float:
    """Share of each vector's k nearest neighbours (cosine, itself excluded) that have its label,
    over all vectors or a seeded sample of `max_queries` of them (chunked, bounded memory)."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    queries = topk.sample(len(v), max_queries, seed)

    def hide_self(rows, scores):
        scores[np.arange(rows.stop - rows.start), queries[rows]] = -np.inf

    top, _ = topk.top_k(v[queries], v, k, mask=hide_self)
    return float((labels[top] == labels[queries][:, None]).mean())


def save(factors: Factors, user_ids: List[str], item_ids: List[str], path: str) -> None:
    np.savez(path, users=factors.users, items=factors.items,
             user_ids=np.array(user_ids, dtype=object), item_ids=np.array(item_ids, dtype=object))


def load(path: str) -> Dict[str, np.ndarray]:
    """{"users", "items", "user_ids", "item_ids"} as saved by save()."""
    with np.load(path, allow_pickle=True) as z:
        return {k: z[k] for k in z.files}
