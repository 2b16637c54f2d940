"""How each feature set of the registry (collabfeat/features.py) is made: make(kind, ...) -> the
Keras net whose output is the feature (the pipeline exports it as a feature model), the training
losses, and how many images it was trained on.

`data` is the catalogue as training reads it (trainer/training_set.py TrainingSet): factors()
(image, item factor) pairs, pseudo_classes(k, seed), labelled_images() (image, label of its facet),
images(), and the counts size, labelled and n_classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from collabfeat import feature_model, imagenet, progress
from collabfeat.config import Config
from collabfeat.features import REGISTRY
from trainer import cnn
from trainer.training_set import TrainingSet


class Made(NamedTuple):
    net: tf.keras.Model
    losses: list[float]
    images: int


class NotTrainable(ValueError):
    """The catalogue cannot train this feature set (for example: no labels); the message says why."""


def _regression(data, cfg, task):
    net, losses = cnn.train_regression(data.factors(), cfg.cnn, task=f"{task} regression")
    return Made(cnn.retrieval(net, cfg.cnn.retrieval), losses, data.size)


def _pseudo_class(data, cfg, task):
    net, losses = cnn.train_classifier(
        data.pseudo_classes(cfg.cnn.clusters, cfg.cnn.seed), cfg.cnn.clusters, cfg.cnn, task=f"{task} pseudo-classes"
    )
    return Made(cnn.retrieval(net, cfg.cnn.retrieval), losses, data.size)


def _imagenet_regression(data, cfg, task):
    tune, size = cfg.finetune, cfg.cnn.image_size
    net = imagenet.regression_backbone(size, tune.size, cfg.cnn.embedding_dim)
    teacher = imagenet.backbone(size, tune.size) if tune.distill else None
    net, losses = cnn.finetune_regression(
        data.factors(), cfg.cnn, tune, net, net.get_layer(imagenet.NETWORK), teacher, task=f"{task} imagenet_regression"
    )
    return Made(cnn.retrieval(net, cfg.cnn.retrieval), losses, data.size)


def _supervised(facet: str, name: str):
    """A classifier of the catalogue's `facet` column (label: the category; style)."""

    def make(data, cfg, task):
        if data.labelled < 2:
            raise NotTrainable(
                f"the catalogue has {data.labelled} images with a {facet}: a classifier needs at least 2"
            )
        net, losses = cnn.train_classifier(
            data.labelled_images(), data.n_classes, cfg.cnn, cfg.eval.baseline_epochs, task=f"{task} {name}"
        )
        return Made(net, losses, data.labelled)

    return make


def _rotation(data, cfg, task):
    net, losses = cnn.train_rotation(data.images(), cfg.cnn, cfg.eval.baseline_epochs, task=f"{task} rotation")
    return Made(net, losses, data.size)


MAKE: dict[str, Callable] = {
    "regression": _regression,
    "pseudo_class": _pseudo_class,
    "imagenet_regression": _imagenet_regression,
    "supervised": _supervised("label", "supervised"),
    "style_supervised": _supervised("style", "style_supervised"),
    "imagenet": lambda data, cfg, task: Made(imagenet.backbone(cfg.cnn.image_size, cfg.eval.imagenet_size), [], 0),
    "rotation": _rotation,
    "random": lambda data, cfg, task: Made(cnn.random_init(cfg.cnn), [], 0),
    "pixels": lambda data, cfg, task: Made(
        cnn.pixels_net(cfg.cnn.image_size), [], 0
    ),  # L2-normalised like every feature
}
assert set(MAKE) == set(REGISTRY), "every registered feature set is made here, and only those"


def make(kind: str, data, cfg, task: str = "baseline") -> Made:
    """Feature set `kind` made from `data` (None for the kinds that read nothing: REGISTRY[kind].reads)."""
    if kind not in MAKE:
        raise ValueError(f"unknown feature set {kind!r}: one of {tuple(REGISTRY)}")
    return MAKE[kind](data, cfg, task)


def train(
    kind: str, images_uri: str, cfg: Config, out_dir: str, factors_path: str | None = None, task: str = ""
) -> dict:
    """The CNNTrainer's and the FeatureTrainers' work: feature set `kind` made from the catalogue (the
    ImageImport's Examples under images_uri; with the MF model's factors at factors_path, for the sets
    trained on them) and saved as a feature model at out_dir (collabfeat/feature_model.py). Returns the
    report; a set the catalogue cannot train (a supervised one without labels) saves nothing and says
    why: {"trained": False, "why": ...}."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown feature set {kind!r}: one of {tuple(REGISTRY)}")
    spec = REGISTRY[kind]
    if spec.reads == "factors" and factors_path is None:
        raise ValueError(f"feature set {kind!r} is trained on the item factors: give FeatureTrainer an mf_model")
    # The sets that train nothing never read the catalogue (at 10^6 images a full pass each).
    data = None
    if spec.reads:
        facet = "style" if spec.reads == "style" else "label"
        data = TrainingSet(images_uri, cfg, factors_path if spec.reads == "factors" else None, facet)
    try:
        made = make(kind, data, cfg, task or "baseline")
    except NotTrainable as why:
        progress.warn(f"Features_{kind}: not trained: {why}")
        return {"kind": kind, "trained": False, "why": str(why)}
    feature_model.save_features(made.net, cfg.cnn.image_size, out_dir, cfg.data.background)
    return {
        "kind": kind,
        "trained": True,
        "losses": made.losses,
        "images": made.images,
        **(data.counts if data else {}),
    }
