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


def train(user_idx: np.ndarray, item_idx: np.ndarray, rating: np.ndarray,
          n_users: int, n_items: int, cfg: MFConfig) -> Factors:
    """Fits the factors on observed (user, item, rating) triples; ids are 0-based indices."""
    if len(user_idx) == 0:
        raise ValueError("no interactions to factorise (all rows were filtered out?)")
    tf.keras.utils.set_random_seed(cfg.seed)
    counts = np.bincount(item_idx, minlength=n_items).astype(np.float64)
    model = MatrixFactorization(n_users, n_items, cfg, item_probability=counts / counts.sum())
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
    data = tf.data.Dataset.from_tensor_slices({
        "user_idx": user_idx.astype(np.int64), "item_idx": item_idx.astype(np.int64),
        "rating": rating.astype(np.float32)})
    data = data.shuffle(len(user_idx), seed=cfg.seed, reshuffle_each_iteration=True).batch(cfg.batch_size)
    hist = model.fit(data, epochs=cfg.epochs, verbose=0)
    return Factors(users=model.users.embeddings.numpy(), items=model.items.embeddings.numpy(),
                   losses=[float(x) for x in hist.history["loss"]])


def popularity(train_items: np.ndarray, n_users: int, n_items: int) -> Factors:
    """The reference ranking: every user ranks items by their number of training pairs."""
    return Factors(np.ones((n_users, 1)), np.bincount(train_items, minlength=n_items)[:, None] * 1.0, [])


def recall_at_k(factors: Factors, train_pairs: np.ndarray, eval_pairs: np.ndarray, k: int,
                chunk: int = 1024) -> float:
    """Mean over users with held-out pairs of |top-k ∩ held-out| / min(k, |held-out|),
    ranking all items by y_i.x_j and excluding the user's training items."""
    if len(eval_pairs) == 0:
        return float("nan")
    held: Dict[int, set] = {}
    for u, i in eval_pairs:
        held.setdefault(int(u), set()).add(int(i))
    seen: Dict[int, List[int]] = {}
    for u, i in train_pairs:
        if int(u) in held:
            seen.setdefault(int(u), []).append(int(i))
    users = np.array(sorted(held))
    recalls = []
    for start in range(0, len(users), chunk):
        batch = users[start:start + chunk]
        scores = factors.users[batch] @ factors.items.T
        for row, u in enumerate(batch):
            scores[row, seen.get(int(u), [])] = -np.inf
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row, u in enumerate(batch):
            hits = len(held[int(u)].intersection(top[row].tolist()))
            recalls.append(hits / min(k, len(held[int(u)])))
    return float(np.mean(recalls))


def neighbour_agreement(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of each vector's k nearest neighbours (cosine) that have its label."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    return float((labels[top] == labels[:, None]).mean())


def save(factors: Factors, user_ids: List[str], item_ids: List[str], path: str) -> None:
    np.savez(path, users=factors.users, items=factors.items,
             user_ids=np.array(user_ids, dtype=object), item_ids=np.array(item_ids, dtype=object))


def load(path: str) -> Dict[str, np.ndarray]:
    """{"users", "items", "user_ids", "item_ids"} as saved by save()."""
    with np.load(path, allow_pickle=True) as z:
        return {k: z[k] for k in z.files}
