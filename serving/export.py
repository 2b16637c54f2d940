"""The serving SavedModel: stock TensorFlow ops only, so stock TF Serving loads it.

Signatures
  serving_default  images: string [batch] (encoded JPEG/PNG/GIF/BMP bytes)
                   -> embedding: float [batch, d], L2-normalised
  similar          images: string [batch], k: int32 scalar
                   -> ids: string [batch, k], scores: float [batch, k]
                   exact in-graph search over the catalogue (MatMul + TopKV2); k is clamped to
                   [1, min(max_k, catalogue size)]
"""
from __future__ import annotations

from typing import List

import numpy as np
import tensorflow as tf

from collabfeat import images as images_lib


class Servable(tf.Module):
    def __init__(self, net: tf.keras.Model, image_size: int, catalogue: np.ndarray,
                 item_ids: List[str], max_k: int):
        super().__init__()
        self.net = net
        self.size = image_size
        self.catalogue = tf.Variable(catalogue.astype(np.float32), trainable=False, name="catalogue")
        self.item_ids = tf.Variable(np.array(item_ids, dtype=object), trainable=False,
                                    dtype=tf.string, name="item_ids")
        self.max_k = min(max_k, len(item_ids))

    def _pixels(self, images):
        def one(data):      # the same preprocessing as every catalogue image's (collabfeat/images.py)
            return tf.ensure_shape(images_lib.pixels(data, self.size), [self.size, self.size, 3])
        return tf.cast(tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([self.size, self.size, 3], tf.uint8)),
                       tf.float32)

    def _embed(self, images):
        return tf.math.l2_normalize(self.net(self._pixels(images), training=False), axis=1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def embed(self, images):
        return {"embedding": self._embed(images)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def similar(self, images, k):
        k = tf.clip_by_value(k, 1, self.max_k)
        scores, idx = tf.math.top_k(tf.matmul(self._embed(images), self.catalogue, transpose_b=True), k=k)
        return {"ids": tf.gather(self.item_ids, idx), "scores": scores}


def export(net: tf.keras.Model, image_size: int, catalogue: np.ndarray, item_ids: List[str],
           max_k: int, path: str) -> None:
    module = Servable(net, image_size, catalogue, item_ids, max_k)
    tf.saved_model.save(module, path, signatures={"serving_default": module.embed,
                                                  "similar": module.similar})
