"""A real pushed version made without the pipeline (fast)."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from collabfeat import config as config_lib
from collabfeat import feature_model
from collabfeat import images as images_lib
from serving import store
from serving.local import ServerProcess  # noqa: F401  (re-exported for the tests)


def catalogue(n=300):
    """n Fashion-MNIST photos as PNG files' bytes, with ids and labels (test split, then training split)."""
    x, y = images_lib.fashion_mnist("test")
    if n > len(x):
        tx, ty = images_lib.fashion_mnist("train")
        x, y = np.concatenate([x, tx]), np.concatenate([y, ty])
    ids = [f"t{i:05d}" for i in range(n)]
    return ids, [images_lib.encode_png(x[i]) for i in range(n)], y[:n]


def small_config(push_dir: str) -> config_lib.Config:
    return config_lib.load(
        overrides=[
            "cnn.image_size=28",
            "cnn.widths=[8,16]",
            "cnn.embedding_dim=16",
            f"serving.push_dir={push_dir}",
            "serving.max_k=50",
        ]
    )


def push_version(push_dir: str, seed: int = 3, n: int = 300, map_sample: int = 20000) -> str:
    """Pushes a random-init CNN's version over n catalogue photos; returns the version path."""
    from serving.build import index, push
    from trainer import cnn

    cfg = small_config(push_dir)
    cfg.cnn.seed = seed
    ids, blobs, _ = catalogue(n)
    pixels = np.stack([images_lib.decode(b, cfg.cnn.image_size) for b in blobs])
    net = cnn.random_init(cfg.cnn)
    emb = cnn.embed(net, pixels)
    with tempfile.TemporaryDirectory() as tmp:
        store.save_index(*index.build(emb, cfg.index), ids, emb, tmp)
        index.write_map(emb, tmp, sample=map_sample)
        # Two more feature sets for the explorer's switch, with their models: another random CNN, and raw pixels.
        other = cfg.cnn.__class__(**{**cfg.cnn.__dict__, "seed": seed + 100})
        with tempfile.TemporaryDirectory() as models:
            for name, other_net in (("random", cnn.random_init(other)), ("pixels", cnn.pixels_net(cfg.cnn.image_size))):
                feature_model.save_features(other_net, cfg.cnn.image_size, f"{models}/{name}")
                rows = cnn.embed(other_net, pixels)
                # as the Indexer stores a set of more than index.explorer_dims dims: projected (pixels: 2,352 -> 32)
                projection = index.reduction(rows, 32) if name == "pixels" else None
                rows = store.project(rows, projection) if projection else rows
                store.write_feature_set(tmp, name, rows, f"{models}/{name}", projection)
        return push.push(feature_model.Embedder(net, cfg.cnn.image_size), tmp, cfg)["destination"]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
