"""The pushed version's SavedModel: stock TensorFlow ops only, so stock TF Serving loads it.

It wraps a feature model (collabfeat/feature_model.py) with the catalogue:
  serving_default  images: string [batch] -> embedding: float [batch, d], as the feature model's
  similar          images: string [batch], k: int32 scalar
                   -> ids: string [batch, k], scores: float [batch, k]
                   exact in-graph search over the catalogue (MatMul + TopKV2); k is clamped to
                   [1, min(max_k, catalogue size)]
The version's ScaNN index (serving/build/index.py) sits beside it in assets.extra/ (serving/store.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from collabfeat import feature_model


class Servable(tf.Module):
    def __init__(self, features, catalogue: np.ndarray, item_ids: list[str], max_k: int):
        super().__init__()
        self.features = features
        self.catalogue = tf.Variable(catalogue.astype(np.float32), trainable=False, name="catalogue")
        self.item_ids = tf.Variable(np.array(item_ids, dtype=object), trainable=False, dtype=tf.string, name="item_ids")
        self.max_k = min(max_k, len(item_ids))

    @tf.function(input_signature=[feature_model.IMAGES])
    def embed(self, images):
        return {"embedding": self.features.embed(images)["embedding"]}

    @tf.function(input_signature=[feature_model.IMAGES, tf.TensorSpec([], tf.int32, name="k")])
    def similar(self, images, k):
        k = tf.clip_by_value(k, 1, self.max_k)
        query = self.features.embed(images)["embedding"]
        scores, idx = tf.math.top_k(tf.matmul(query, self.catalogue, transpose_b=True), k=k)
        return {"ids": tf.gather(self.item_ids, idx), "scores": scores}


def export(features, catalogue: np.ndarray, item_ids: list[str], max_k: int, path: str) -> None:
    """features: a feature model (its path, loaded, or an Embedder) -> a servable version at `path`."""
    if isinstance(features, str):
        features = feature_model.load_model(features)
    module = Servable(features, catalogue, item_ids, max_k)
    tf.saved_model.save(module, path, signatures={"serving_default": module.embed, "similar": module.similar})
