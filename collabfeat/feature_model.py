"""A feature model: what every feature set's trainer writes and everything downstream embeds images with.

A SavedModel of stock TensorFlow ops (stock TF Serving loads it), in TFX's layout (<Model artifact>/Format-Serving/):
  serving_default  images: string [batch] (encoded JPEG/PNG/GIF/BMP bytes)
                   -> embedding: float [batch, d], L2-normalised
The images are decoded and resized by collabfeat/images.py pixels(), the preprocessing every image gets
everywhere: the Evaluator, the Indexer, the pushed version and the explorer all embed through this signature.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from collabfeat import images as images_lib
from collabfeat import progress

FORMAT_SERVING = "Format-Serving"  # TFX's serving model layout (tfx.utils.path_utils.serving_model_dir)


def model_dir(model_uri: str) -> str:
    """Where a Model artifact holds its SavedModel."""
    return os.path.join(model_uri, FORMAT_SERVING)


def load_model(path: str):
    """A feature model or a pushed version, loaded; its .embed takes image bytes."""
    return tf.saved_model.load(path)


def embed_batches(model, blobs: Iterable[Sequence[bytes]], task: str = "", total: int | None = None):
    """The L2-normalised embeddings a feature model (a path or loaded) gives for batches of image
    bytes, one batch at a time (memory holds one batch). With a `task`, the batches are reported as
    its progress (`total` batches, if known)."""
    if isinstance(model, str):
        model = load_model(model)
    serve = model.signatures["serving_default"]
    if task:
        blobs = progress.iterate(blobs, task, total)
    for b in blobs:
        if len(b):
            yield serve(images=tf.constant(list(b)))["embedding"].numpy()


def embed(model, blobs: Iterable[Sequence[bytes]], task: str = "", total: int | None = None) -> np.ndarray:
    """embed_batches(), as one array (memory: the embeddings, not the images)."""
    out = list(embed_batches(model, blobs, task, total))
    if out:
        return np.concatenate(out)
    return np.zeros((0, output_dim(model)), np.float32)


def output_dim(model) -> int:
    """The size of the embeddings a feature model (a path or loaded) gives (0 if its signature leaves it open)."""
    if isinstance(model, str):
        model = load_model(model)
    return int(model.signatures["serving_default"].structured_outputs["embedding"].shape[-1] or 0)


def in_batches(blobs: Sequence[bytes], batch: int = 256):
    """A list of image bytes in slices of `batch`."""
    for start in range(0, len(blobs), batch):
        yield blobs[start : start + batch]


IMAGES = tf.TensorSpec([None], tf.string, name="images")


class Embedder(tf.Module):
    """A Keras net on uint8-valued RGB [size, size, 3] -> a feature model on image bytes."""

    def __init__(self, net: tf.keras.Model, image_size: int, background: Sequence[int] = images_lib.WHITE):
        super().__init__()
        # The net's variables are saved with the traced function, not the net as a Keras object:
        # Keras's per-layer traces made saving EfficientNet-Lite0 5x slower and loading it 7x.
        object.__setattr__(self, "net", net)
        self.net_variables = list(net.weights)
        self.size = image_size
        self.background = tuple(float(c) for c in background)  # what transparent pixels are composited on

    @tf.function(input_signature=[IMAGES])
    def embed(self, images):
        def one(data):  # the same preprocessing as every catalogue image's (collabfeat/images.py)
            return tf.ensure_shape(images_lib.pixels(data, self.size, self.background), [self.size, self.size, 3])

        pixels = tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([self.size, self.size, 3], tf.uint8))
        return {"embedding": tf.math.l2_normalize(self.net(tf.cast(pixels, tf.float32), training=False), axis=1)}


def save_features(
    net: tf.keras.Model, image_size: int, path: str, background: Sequence[int] = images_lib.WHITE
) -> None:
    """Saves a feature model (any TF filesystem: local, gs://, ram://)."""
    module = Embedder(net, image_size, background)
    tf.saved_model.save(module, path, signatures={"serving_default": module.embed})
