"""The Keras CNN that maps an image to a feature vector, and the ways it is trained.

One backbone for every feature set so that the comparison is fair:
  regression    onto each item's latent factor from MF (cosine or L2 loss)      [collaborative]
  pseudo_class  k-means clusters of the latent factors as classes (the paper)   [collaborative]
  supervised    the images' labels (an upper reference)
  rotation      self-supervised: which of 0/90/180/270 degrees was the image turned
  random        the untrained backbone
The feature is the L2-normalised output of the layer named "embedding".
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.cluster import KMeans
from tensorflow.python.framework import config as tf_config  # op determinism's switch back and state: not public

from collabfeat import progress
from collabfeat.config import CNNConfig, FinetuneConfig

EMBEDDING = "embedding"
# Batch normalisation's moving statistics follow the last ~10 batches, not Keras's default ~100:
# while the weights still move fast, a longer average describes weights that are gone, and the
# trained net then sees other activations at inference than it was trained on.
BN_MOMENTUM = 0.9


def backbone(cfg: CNNConfig) -> tf.keras.Model:
    """uint8-valued RGB images [S, S, 3] -> the (unnormalised) embedding."""
    inputs = tf.keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = tf.keras.layers.Rescaling(1.0 / 255)(inputs)
    for w in cfg.widths:
        x = tf.keras.layers.Conv2D(w, 3, padding="same", use_bias=False)(x)
        x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = tf.keras.layers.ReLU()(x)
        x = tf.keras.layers.MaxPooling2D()(x)
    x = tf.keras.layers.Conv2D(cfg.widths[-1], 3, padding="same", activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(cfg.embedding_dim, name=EMBEDDING)(x)
    return tf.keras.Model(inputs, x, name="backbone")


def with_head(net: tf.keras.Model, units: int, activation: str | None) -> tf.keras.Model:
    x = tf.keras.layers.ReLU()(net.output)
    out = tf.keras.layers.Dense(units, activation=activation, name="head")(x)
    return tf.keras.Model(net.input, out)


def seeded(cfg: CNNConfig) -> None:
    """Seeds Python, NumPy and TensorFlow with cnn.seed; with cnn.deterministic, TensorFlow's ops
    run deterministically too (tf.config.experimental.enable_op_determinism: the same seed and data
    give the same weights, at some cost in speed: bench/determinism.py)."""
    tf.keras.utils.set_random_seed(cfg.seed)
    if getattr(cfg, "deterministic", True):
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


def _augment(cfg: CNNConfig):
    if not cfg.augment:
        return None
    return tf.keras.Sequential(
        [
            tf.keras.layers.RandomFlip("horizontal", seed=cfg.seed),
            tf.keras.layers.RandomTranslation(0.1, 0.1, seed=cfg.seed),
        ]
    )


def pairs(images: np.ndarray, targets: np.ndarray) -> tf.data.Dataset:
    """(image, target) pairs held in memory as a dataset (tests); the pipeline streams them from disk."""
    return tf.data.Dataset.from_tensor_slices((images, targets))


def _stream(data: tf.data.Dataset, cfg: CNNConfig, rotate: bool = False) -> tuple[tf.data.Dataset, int | None]:
    """data: unbatched (uint8 image [S, S, 3], target) pairs -> shuffled, augmented float batches,
    and the steps of an epoch (None: one pass). If the data says how many pairs it holds (its
    cardinality) and they are more than cfg.epoch_images, an epoch is that many pairs of the data
    repeated as one stream: the cost of training stops growing with the catalogue, and over the
    epochs every image is still seen."""
    aug = _augment(cfg)
    size, steps = int(data.cardinality()), None
    if cfg.epoch_images and size > cfg.epoch_images:
        data, steps = data.repeat(), -(-cfg.epoch_images // cfg.batch_size)
    data = data.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True).batch(cfg.batch_size)
    data = data.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if aug is not None:
        data = data.map(lambda x, y: (aug(x, training=True), y))
    if rotate:  # the pretext task: the target is the number of quarter turns

        def turn(x, _):
            k = tf.random.uniform([tf.shape(x)[0]], 0, 4, dtype=tf.int32, seed=cfg.seed)
            return tf.map_fn(lambda a: tf.image.rot90(a[0], a[1]), (x, k), fn_output_signature=tf.float32), k

        data = data.map(turn)
    return data.prefetch(2), steps


def _fit(
    model, data: tf.data.Dataset, loss, cfg: CNNConfig, epochs: int, rotate: bool = False, task: str = "CNN training"
) -> list[float]:
    """Trains `model` on unbatched (image, target) pairs (_stream) with Adam at cfg.learning_rate,
    then recalibrates its batch normalisation on the unaugmented images."""
    stream, steps = _stream(data, cfg, rotate)
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), loss=loss)
    hist = model.fit(stream, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[progress.keras_callback(task)])
    recalibrate(model, data.map(lambda x, y: x).shuffle(cfg.shuffle_buffer, seed=cfg.seed), cfg.batch_size)
    return [float(x) for x in hist.history["loss"]]


RECALIBRATION_BATCHES = 16


def recalibrate(
    model: tf.keras.Model, images: tf.data.Dataset, batch_size: int, batches: int = RECALIBRATION_BATCHES
) -> None:
    """Sets every batch normalisation's moving statistics to the average of its batch statistics
    over `batches` batches of (shuffled) training images as they are served (not augmented), with the
    trained weights. During training the moving averages trail weights that keep changing and see
    augmented images; measured on the emoji's style, a classifier whose training batches were 87%
    right was 43% right on the same images at inference before this, 87% after."""
    layers = [m for m in model.submodules if isinstance(m, tf.keras.layers.BatchNormalization) and m.trainable]
    if not layers:
        return
    kept = [m.momentum for m in layers]
    try:
        for i, x in enumerate(images.take(batches * batch_size).batch(batch_size)):
            for m in layers:
                m.momentum = i / (i + 1)  # a running mean over the batches so far
            model(tf.cast(x, tf.float32), training=True)
    finally:
        for m, momentum in zip(layers, kept):
            m.momentum = momentum


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_regression(
    data: tf.data.Dataset,
    cfg: CNNConfig,
    epochs: int | None = None,
    task: str = "CNN regression",
    net: tf.keras.Model | None = None,
) -> tuple[tf.keras.Model, list[float]]:
    """data: (image, item factor) pairs; the factors are L2-normalised here. `net`: a backbone to
    start from (for example ImageNet weights, collabfeat/imagenet.py), else a fresh one."""
    seeded(cfg)
    net = net or backbone(cfg)
    model = with_head(net, data.element_spec[1].shape[-1], None)
    if cfg.regression_loss == "cosine":
        loss = tf.keras.losses.CosineSimilarity()
    else:
        loss = tf.keras.losses.MeanSquaredError()
    data = data.map(lambda x, y: (x, tf.cast(y, tf.float32) / tf.maximum(tf.norm(tf.cast(y, tf.float32)), 1e-12)))
    losses = _fit(model, data, loss, cfg, epochs or cfg.epochs, task=task)
    return net, losses


def pooled(net: tf.keras.Model) -> tf.keras.Model:
    """The backbone's pooled features: the input of its embedding layer (a projection of them)."""
    return tf.keras.Model(net.input, net.get_layer(EMBEDDING).input, name=f"{net.name}_pooled")


def retrieval(net: tf.keras.Model, layer: str) -> tf.keras.Model:
    """The features a trained collaborative net gives (cnn.retrieval): its pooled features or its
    embedding layer (the projection trained onto the factors)."""
    return pooled(net) if layer == "pooled" else net


class _Finetune(tf.keras.Model):
    """image -> (factor prediction, pooled features), trained on the cosine to the factor with two
    AdamW rates: the new layers (`head`) at one, the pretrained ones at another; with a `teacher`
    (the frozen pretrained network), plus `distill` x (1 - cosine) between its pooled features of
    the same (augmented) image and the student's."""

    def setup(self, head, head_optimizer, teacher=None, distill: float = 0.0):
        self.head_ids = {id(v) for v in head}
        if teacher is not None:
            teacher.trainable = False  # frozen: the student moves towards it, never it towards the student
        self.head_optimizer, self.teacher, self.distill = head_optimizer, teacher, distill

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            pred, feats = self(x, training=True)
            loss = -tf.reduce_mean(tf.reduce_sum(tf.math.l2_normalize(pred, 1) * y, 1))
            total = loss
            if self.teacher is not None and self.distill:
                t = tf.stop_gradient(tf.math.l2_normalize(self.teacher(x, training=False), 1))
                total += self.distill * tf.reduce_mean(1.0 - tf.reduce_sum(tf.math.l2_normalize(feats, 1) * t, 1))
        variables = self.trainable_variables
        grads = tape.gradient(total, variables)
        head = [(g, v) for g, v in zip(grads, variables) if id(v) in self.head_ids and g is not None]
        body = [(g, v) for g, v in zip(grads, variables) if id(v) not in self.head_ids and g is not None]
        self.head_optimizer.apply_gradients(head)
        if body:
            self.optimizer.apply_gradients(body)
        return {"loss": loss, "total": total}


def finetune_regression(
    data: tf.data.Dataset,
    cfg: CNNConfig,
    tune: FinetuneConfig,
    net: tf.keras.Model,
    pretrained: tf.keras.Model,
    teacher: tf.keras.Model | None = None,
    task: str = "CNN fine-tuning",
) -> tuple[tf.keras.Model, list[float]]:
    """Collaborative regression from pretrained weights. net: image -> embedding, built on
    `pretrained` (the network whose weights are kept; the layers outside it are new); data:
    (image, item factor) pairs. The new layers first settle on the frozen network
    (tune.warmup_epochs, AdamW at tune.head_learning_rate), then every layer trains (tune.epochs,
    AdamW at tune.learning_rate, the new layers still at theirs). teacher: image -> the frozen
    network's pooled features, to distil alongside the factor loss (tune.distill > 0)."""
    seeded(cfg)
    head_net = with_head(net, data.element_spec[1].shape[-1], None)
    model = _Finetune(head_net.input, [head_net.output, net.get_layer(EMBEDDING).input])
    new = [v for v in model.trainable_variables if not any(v is w for w in pretrained.trainable_variables)]
    data = data.map(lambda x, y: (x, tf.math.l2_normalize(tf.cast(y, tf.float32), -1)))
    stream, steps = _stream(data, cfg)
    losses: list[float] = []

    def rate(lr):
        return tf.keras.optimizers.AdamW(lr, weight_decay=tune.weight_decay)

    for frozen, epochs in ((True, tune.warmup_epochs), (False, tune.epochs)):
        if not epochs:
            continue
        pretrained.trainable = not frozen
        model.setup(new, rate(tune.head_learning_rate), None if frozen else teacher, tune.distill)
        model.compile(optimizer=rate(tune.learning_rate))
        hist = model.fit(
            stream,
            epochs=epochs,
            steps_per_epoch=steps,
            verbose=0,
            callbacks=[progress.keras_callback(f"{task}: {'head' if frozen else 'all layers'}")],
        )
        losses += [float(v) for v in hist.history["loss"]]
    pretrained.trainable = True
    recalibrate(net, data.map(lambda x, y: x).shuffle(cfg.shuffle_buffer, seed=cfg.seed), cfg.batch_size)
    return net, losses


def pseudo_classes(factors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The paper's variant: k-means over the (normalised) latent factors -> cluster ids."""
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit(factors)).astype(np.int32)


def train_classifier(
    data: tf.data.Dataset,
    n_classes: int,
    cfg: CNNConfig,
    epochs: int | None = None,
    rotate: bool = False,
    task: str = "CNN classifier",
    net: tf.keras.Model | None = None,
):
    """data: (image, class id) pairs. `net`: a backbone to start from (for example ImageNet
    weights, collabfeat/imagenet.py), else a fresh one."""
    seeded(cfg)
    net = net or backbone(cfg)
    model = with_head(net, n_classes, None)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    data = data.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    losses = _fit(model, data, loss, cfg, epochs or cfg.epochs, rotate=rotate, task=task)
    return net, losses


def train_rotation(images: tf.data.Dataset, cfg: CNNConfig, epochs: int | None = None, task: str = "CNN rotation"):
    """images: a dataset of images (the targets are made by rotating them)."""
    return train_classifier(images.map(lambda x: (x, 0)), 4, cfg, epochs, rotate=True, task=task)


def random_init(cfg: CNNConfig) -> tf.keras.Model:
    seeded(cfg)
    return backbone(cfg)


def pixels_net(image_size: int) -> tf.keras.Model:
    """The raw-pixels feature set as a net: the image scaled to [0, 1] and flattened (pixels())."""
    inputs = tf.keras.Input((image_size, image_size, 3), name="image")
    return tf.keras.Model(
        inputs, tf.keras.layers.Flatten()(tf.keras.layers.Rescaling(1.0 / 255)(inputs)), name="pixels"
    )


def batches(images, batch: int):
    """uint8 images [n, S, S, 3] (array) or an unbatched dataset of them -> numpy batches."""
    if isinstance(images, tf.data.Dataset):
        yield from images.batch(batch).prefetch(2).as_numpy_iterator()
    else:
        for start in range(0, len(images), batch):
            yield images[start : start + batch]


def embed(net: tf.keras.Model, images, batch: int = 512, task: str = "", size: int | None = None) -> np.ndarray:
    """L2-normalised features of uint8 images (an array [n, S, S, 3] or a dataset of images),
    computed batch by batch: memory holds the features, not the images. With a `task` name, the
    batches are reported as its progress (out of `size` images, if the dataset's size is known)."""
    parts = batches(images, batch)
    if task:
        n = len(images) if isinstance(images, np.ndarray) else size
        parts = progress.iterate(parts, task, -(-n // batch) if n else None)
    out = [unit(net.predict_on_batch(x.astype(np.float32) if x.dtype != np.float32 else x)) for x in parts]
    return np.concatenate(out) if out else np.zeros((0, net.output_shape[-1]), np.float32)


def pixels(images) -> np.ndarray:
    return np.concatenate([pixel_batch(x) for x in batches(images, 512)])


def pixel_batch(images: np.ndarray) -> np.ndarray:
    return unit(images.reshape(len(images), -1).astype(np.float32) / 255.0)
