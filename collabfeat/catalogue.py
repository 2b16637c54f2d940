"""Item tables -> validated image records, with Beam.

An item table is a CSV with a header naming at least `item_id` and `image` (a path relative to
the image directory, or a URI), and optionally the facets `label` (an integer category; used only
for evaluation and the supervised baseline, never by the collaborative model) and `style` (an
integer; evaluation only). Each record becomes {"item_id", "image": PNG bytes of the RGB image
resized to image_size^2 by the served model's own preprocessing (images.pixels), "label": int or -1,
"style": int or -1}, or an outcome with a reason: missing_id, bad_row, bad_label, duplicate_item,
missing_image, unreadable_image, corrupt_image, image_too_large, unsupported_image (a format
TensorFlow cannot decode, such as TIFF or WebP).
"""

from __future__ import annotations

import csv
import io
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf

from collabfeat import examples, images, outcomes
from collabfeat.config import DataConfig
from collabfeat.outcomes import USED

REQUIRED = ("item_id", "image")
FACETS = ("label", "style")  # optional integer columns: -1 where absent
FACET_NAMES = {"label": "category", "style": "style"}  # the facets' names in the evaluation and the reports


def header(path: str) -> list[str]:
    with tf.io.gfile.GFile(path) as f:
        first = f.readline()
    cols = next(csv.reader([first]), [])
    cols = [c.strip() for c in cols]
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"{path}: the header {cols} lacks the column(s) {missing}")
    return cols


def parse_line(line: str, cols: list[str], where: str) -> dict:
    values = next(csv.reader(io.StringIO(line)), [])
    if len(values) != len(cols):
        return {"_error": ("bad_row", f"{where}: {len(values)} fields, the header has {len(cols)}: {line[:200]!r}")}
    row = dict(zip(cols, (v.strip() for v in values)))
    if not row["item_id"]:
        return {"_error": ("missing_id", f"{where}: empty item_id in {line[:200]!r}")}
    for facet in FACETS:
        value = row.get(facet, "")
        try:
            row[facet] = int(value) if value != "" else -1
        except ValueError:
            return {"_error": ("bad_label", f"{where}: item {row['item_id']!r}: {facet} {value!r} is not an integer")}
    return row


def load_record(row: dict, image_dir: str, size: int, where: str, background=images.WHITE):
    """-> ("used", record) or (reason, detail)."""
    try:
        pixels = images.decode(images.read_bytes(row["image"], image_dir), size, background)
    except images.ImageError as e:
        return e.reason, f"{where}: item {row['item_id']!r}, image {row['image']!r}: {e}"
    return USED, {
        "item_id": row["item_id"],
        "image": images.encode_png(pixels),
        **{facet: row.get(facet, -1) for facet in FACETS},
    }


class ImportItems(beam.PTransform):
    """A CSV item table -> {"records": PCollection of records, "outcomes": (outcome, 1, detail)}."""

    def __init__(self, path: str, image_dir: str, size: int, background=images.WHITE):
        super().__init__()
        self.path, self.image_dir, self.size, self.background = path, image_dir, size, tuple(background)
        self.cols = header(path)

    def expand(self, p):
        cols, where, image_dir, size, background = self.cols, self.path, self.image_dir, self.size, self.background

        def parse(line):
            row = parse_line(line, cols, where)
            if "_error" in row:
                yield beam.pvalue.TaggedOutput("bad", (row["_error"][0], 1, row["_error"][1]))
            else:
                yield row["item_id"], row

        def first_of(kv):
            item, rows = kv
            rows = sorted(rows, key=lambda r: (r["image"], r["label"]))
            for extra in rows[1:]:
                yield beam.pvalue.TaggedOutput(
                    "bad", ("duplicate_item", 1, f"{where}: item {item!r} listed again (image {extra['image']!r})")
                )
            yield rows[0]

        def load(row):
            outcome, value = load_record(row, image_dir, size, where, background)
            if outcome == USED:
                yield value
            else:
                yield beam.pvalue.TaggedOutput("bad", (outcome, 1, value))

        parsed = (
            p
            | "Read" >> beam.io.ReadFromText(self.path, skip_header_lines=1)
            | "SkipBlank" >> beam.Filter(lambda line: line.strip())
            | "Parse" >> beam.FlatMap(parse).with_output_types(tuple[str, dict]).with_outputs("bad", main="rows")
        )
        unique = (
            parsed.rows
            | "ById" >> beam.GroupByKey()
            | "Dedupe" >> beam.FlatMap(first_of).with_outputs("bad", main="rows")
        )
        loaded = (
            unique.rows
            | "Reshuffle" >> beam.Reshuffle()
            | "Load" >> beam.FlatMap(load).with_outputs("bad", main="records")
        )
        used = loaded.records | "Used" >> beam.Map(lambda r: (USED, 1, None))
        outcomes = (parsed.bad, unique.bad, loaded.bad, used) | "Outcomes" >> beam.Flatten()
        return {"records": loaded.records, "outcomes": outcomes}


FEATURES = {"item_id": tf.string, "image": tf.string, "label": tf.int64}


def read_facets(uri: str, split: str) -> dict[str, np.ndarray]:
    """facet -> its values (-1: none) for a split's images in file order, without decoding any
    image; a facet no record has (older artifacts have no style) is left out."""
    spec = {facet: tf.io.FixedLenFeature([], tf.int64, default_value=-1) for facet in FACETS}
    data = examples.records(uri, split).batch(1 << 14).map(lambda s: tf.io.parse_example(s, spec))
    parts = list(data.as_numpy_iterator())
    out = {facet: np.concatenate([b[facet] for b in parts]) if parts else np.zeros(0, np.int64) for facet in FACETS}
    return {facet: v for facet, v in out.items() if (v >= 0).any()}


def read_labels(uri: str, split: str, facet: str = "label") -> dict[str, int]:
    """item id -> its `facet` (FACETS; -1: none) of an images Examples split, without decoding any image."""

    out: dict[str, int] = {}
    for b in examples.batches(uri, split, {"item_id": tf.string, facet: (tf.int64, -1)}):
        out.update(zip((i.decode() for i in b["item_id"]), b[facet].tolist()))
    if not out:
        raise ValueError(f"no images in split {split!r} of {uri}")
    return out


def split_images(uri: str, split: str) -> list[bytes]:
    """The stored (PNG) bytes of a split's images, in file order (read_facets' order)."""

    return [x for b in examples.batches(uri, split, {"image": tf.string}) for x in b["image"]]


def image_dataset(uri: str, split: str, size: int, facet: str = "label") -> tf.data.Dataset:
    """An images Examples split streamed from disk, in file order:
    (item id, uint8 RGB image [size, size, 3], its `facet`: label or style, -1 for none) per record."""

    spec = {
        "item_id": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
        facet: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }

    def parse(record):
        r = tf.io.parse_single_example(record, spec)
        image = tf.ensure_shape(tf.io.decode_png(r["image"], channels=3), [size, size, 3])
        return r["item_id"], image, r[facet]

    return examples.records(uri, split).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def import_images(p: beam.Pipeline, data: DataConfig, image_size: int, out_uri: str) -> dict[str, dict]:
    """The ImageImport component's work: the item tables -> Examples under out_uri, split "catalogue"
    (data.items) and, where given, "heldout" (eval_items), "transfer" (labelled images from another
    source) and "unseen" (images in a style no catalogue image has). Runs `p`; returns split -> the
    outcome of its records (collabfeat/outcomes.py), in split order."""
    tables = {"catalogue": data.items}
    for split, path in (("heldout", data.eval_items), ("transfer", data.transfer_items), ("unseen", data.unseen_items)):
        if path:
            tables[split] = path
    with p:
        for split, path in tables.items():
            out = p | f"Import{split}" >> ImportItems(path, data.image_dir, image_size, data.background)
            _ = out["records"] | f"Write{split}" >> examples.WriteSplit(out_uri, split)
            _ = out["outcomes"] | f"Outcomes{split}" >> outcomes.WriteOutcomes(
                os.path.join(out_uri, f"outcomes-{split}.json")
            )
    return {split: outcomes.read(os.path.join(out_uri, f"outcomes-{split}.json")) for split in tables}
