"""The catalogue as the feature trainers read it: images streamed from the ImageImport's Examples, joined
with their item factors, pseudo-classes or labels."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from collabfeat.catalogue import image_dataset, read_labels
from collabfeat.config import Config
from trainer import cnn, mf


class TrainingSet:
    """The catalogue images, streamed from the images artifact; with an MF model, only those that
    have an item factor, joined with it by a lookup table: memory holds the factor table, not images."""

    def __init__(self, images_uri: str, cfg: Config, factors_path: str | None = None, facet: str = "label"):
        self.images_uri, self.cfg, self.facet = images_uri, cfg, facet
        labels = read_labels(images_uri, "catalogue", facet)
        self.n_classes = max(labels.values()) + 1
        self.row = None
        if factors_path is None:
            self.labelled = sum(1 for v in labels.values() if v >= 0)
            self.counts = {"catalogue_images": len(labels)}
            self.size = len(labels)
            return
        f = mf.load(factors_path)
        factor_ids = [str(i) for i in f["item_ids"]]
        have = set(labels).intersection(factor_ids)
        self.targets = f["items"].astype(np.float32)  # normalised by the trainers (regression, k-means)
        self.with_image = np.array([i in have for i in factor_ids])
        self.labelled = sum(1 for i in have if labels[i] >= 0)
        self.size = len(have)
        self.counts = {
            "catalogue_images": len(labels),
            "with_factor": len(have),
            "without_factor (never seen, or filtered out)": len(labels) - len(have),
            "factors_without_image": len(factor_ids) - len(have),
        }
        self.row = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(factor_ids, tf.string), tf.range(len(factor_ids), dtype=tf.int64)
            ),
            default_value=-1,
        )

    def _images(self, labelled=False):
        """(factor row, image, label) of the images (with a factor, if there are factors; with a
        label, if asked), with their number as the cardinality (checked while streaming): the
        trainers bound an epoch by it."""
        data = image_dataset(self.images_uri, "catalogue", self.cfg.cnn.image_size, self.facet)
        if self.counts["catalogue_images"] <= self.cfg.cnn.shuffle_buffer:  # what in_id_order holds
            data = in_id_order(data)
        if self.row is not None:
            data = data.map(lambda i, x, v: (self.row.lookup(i), x, v)).filter(lambda r, x, v: r >= 0)
        else:
            data = data.map(lambda i, x, v: (tf.constant(-1, tf.int64), x, v))
        if labelled:
            data = data.filter(lambda r, x, v: v >= 0)
        return data.apply(tf.data.experimental.assert_cardinality(self.labelled if labelled else self.size))

    def factors(self):
        """(image, item factor) pairs."""
        table = tf.constant(self.targets)
        return self._images().map(lambda r, x, v: (x, tf.gather(table, r)))

    def pseudo_classes(self, k: int, seed: int):
        """(image, k-means cluster of its item factor) pairs (the paper's variant)."""
        classes = np.full(len(self.targets), -1, np.int32)
        classes[self.with_image] = cnn.pseudo_classes(self.targets[self.with_image], k, seed)
        table = tf.constant(classes)
        return self._images().map(lambda r, x, v: (x, tf.gather(table, r)))

    def labelled_images(self):
        """(image, label) pairs of the images that have a label (the facet's value: category or style)."""
        return self._images(labelled=True).map(lambda r, x, v: (x, v))

    def images(self):
        return self._images().map(lambda r, x, v: x)


def in_id_order(data):
    """(item id, image, value) records held in memory in item-id order: training is then repeatable
    whatever order the import's Beam workers wrote the records in. Only for a catalogue that fits
    the training's shuffle buffer (cnn.shuffle_buffer), which holds that many images anyway."""
    ids, xs, values = [], [], []
    for i, x, v in data.as_numpy_iterator():
        ids.append(i)
        xs.append(x)
        values.append(v)
    if not ids:
        return data
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    return tf.data.Dataset.from_tensor_slices(
        (np.array(ids, dtype=object)[order], np.stack(xs)[order], np.array(values)[order])
    )
