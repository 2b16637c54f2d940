"""tf.Example records in TFX's Examples layout: <artifact uri>/Split-<name>/*.gz."""

from __future__ import annotations

import gzip
import os
import struct
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from tfx_bsl.coders import example_coder


def split_dir(uri: str, split: str) -> str:
    return os.path.join(uri, f"Split-{split}")


def split_files(uri: str, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir(uri, split), "*")))
    if not files:
        raise FileNotFoundError(f"no records for split {split!r} under {uri}")
    return files


def count_records(split_uri: str) -> int:
    """The records in a split's gzipped TFRecord files, counted from the records' length headers
    (about 10x faster than tf.data here: 4.6M records in 7 s)."""
    n = 0
    for path in tf.io.gfile.glob(os.path.join(split_uri, "*.gz")):
        with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
            while header := f.read(12):  # length (8 bytes), its CRC (4), data, data CRC (4)
                f.seek(struct.unpack("<Q", header[:8])[0] + 4, 1)
                n += 1
    return n


def to_dict(serialized: bytes) -> dict[str, Any]:
    """The first value of each feature (records here hold one value per feature)."""
    ex = tf.train.Example.FromString(serialized)
    out: dict[str, Any] = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        values = getattr(feat, kind).value if kind else []
        out[name] = values[0] if len(values) else None
    return out


def make(values: dict[str, Any]) -> bytes:
    feats = {}
    for name, v in values.items():
        if isinstance(v, str):
            v = v.encode()
        if isinstance(v, bytes):
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        elif isinstance(v, float):
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
        else:
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def read(uri: str, split: str) -> Iterator[dict[str, Any]]:
    """All records of a split one by one, in-process (for tests and small tables)."""
    for path in split_files(uri, split):
        compression = "GZIP" if path.endswith(".gz") else ""
        for rec in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            yield to_dict(rec)


def records(uri: str, split: str, shuffle: int = 0, seed: int | None = None) -> tf.data.Dataset:
    """A split's serialized records, streamed from its files; with `shuffle`, through a shuffle
    buffer of that many records (bounded memory), reshuffled every epoch."""
    files = split_files(uri, split)
    compression = "GZIP" if files[0].endswith(".gz") else ""
    data = tf.data.TFRecordDataset(files, compression_type=compression, num_parallel_reads=min(4, len(files)))
    if shuffle:
        data = data.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)
    return data


def dataset(
    uri: str, split: str, spec: dict[str, tf.dtypes.DType], batch_size: int, shuffle: int = 0, seed: int | None = None
) -> tf.data.Dataset:
    """Batches of a split's records parsed to {feature: tensor [batch]} (one value per feature);
    a spec's value is a dtype, or (dtype, the value of records that lack the feature)."""
    features = {
        name: tf.io.FixedLenFeature([], *dtype) if isinstance(dtype, tuple) else tf.io.FixedLenFeature([], dtype)
        for name, dtype in spec.items()
    }
    return (
        records(uri, split, shuffle, seed)
        .batch(batch_size)
        .map(lambda s: tf.io.parse_example(s, features), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )


def batches(
    uri: str, split: str, spec: dict[str, tf.dtypes.DType], batch_size: int = 1 << 16
) -> Iterator[dict[str, Any]]:
    """A split's columns as numpy arrays, one batch at a time (streaming counts and samples)."""
    yield from dataset(uri, split, spec, batch_size).as_numpy_iterator()


_KINDS = {  # the values a tf.Example's list holds for each dtype of a spec
    tf.int64: pa.types.is_integer,
    tf.float32: pa.types.is_floating,
    tf.string: lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t),
}


def column_batches(
    uri: str, split: str, spec: dict[str, tf.dtypes.DType], batch_size: int = 1 << 16
) -> Iterator[dict[str, np.ndarray]]:
    """batches()' columns (a spec as dataset()'s), decoded by tfx_bsl (about 5x faster than tf.data's
    parsing: 4.9M pairs in 10 s against 54 s), file after file: the records come in another order
    than records()' interleaved reads, so this is for uses the order does not change (counts, sums,
    pairs sorted afterwards)."""
    for path in split_files(uri, split):
        for batch in record_batches(path, batch_size):
            out = {}
            for name, dtype in spec.items():
                dtype, default = dtype if isinstance(dtype, tuple) else (dtype, None)
                have = name in batch.schema.names
                lengths = (
                    pc.fill_null(pc.list_value_length(batch.column(name)), 0).to_numpy(zero_copy_only=False)
                    if have
                    else np.zeros(batch.num_rows, np.int32)
                )
                if (lengths > 1).any():
                    raise ValueError(f"{path}: a record has {lengths.max()} values of feature {name!r}, not one")
                if default is None and (lengths == 0).any():
                    raise ValueError(f"{path}: {int((lengths == 0).sum())} records lack feature {name!r}")
                values = (
                    np.empty(batch.num_rows, dtype.as_numpy_dtype)
                    if default is None
                    else np.full(batch.num_rows, default, dtype.as_numpy_dtype)
                )
                if have:
                    flat = pc.list_flatten(batch.column(name))
                    if len(flat) and not _KINDS[dtype](flat.type):
                        raise ValueError(f"{path}: feature {name!r} holds {flat.type} values, not {dtype.name}")
                    values[lengths == 1] = flat.to_numpy(zero_copy_only=False)
                out[name] = values
            yield out


def record_batches(path: str, batch_size: int = 1 << 16) -> Iterator[pa.RecordBatch]:
    """A gzipped TFRecord file of tf.Examples as Arrow record batches (a list column per feature,
    typed by tfx_bsl's decoder), read and decoded in C++ `batch_size` records at a time."""
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    compression = "GZIP" if path.endswith(".gz") else ""
    for chunk in tf.data.TFRecordDataset(path, compression).batch(batch_size).as_numpy_iterator():
        yield decoder.DecodeBatch(list(chunk))


def part_path(directory: str) -> str:
    """A new file name under `directory` for a gzipped TFRecord part."""
    return f"{directory}/part-{uuid.uuid4().hex}.gz"


def record_writer(path: str) -> tf.io.TFRecordWriter:
    """A gzipped TFRecord file being written (TF's C++ writer)."""
    return tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP"))


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Serialized records -> a gzipped TFRecord file; how many were written."""
    n = 0
    with record_writer(path) as w:
        for record in records:
            w.write(record)
            n += 1
    return n


def move_parts(parts: Iterable[tuple[str, int]], split_uri: str) -> int:
    """Part files (path, records) -> <split_uri>/data_tfrecord-i-of-n.gz (empty ones dropped; no records at
    all: one empty file); the records in them.
    Only the parts a pipeline reported are moved: a retried bundle's leftovers stay behind."""
    parts = sorted(p for p in parts if p[1])
    tf.io.gfile.makedirs(split_uri)
    for i, (path, _) in enumerate(parts):
        tf.io.gfile.rename(path, f"{split_uri}/data_tfrecord-{i:05d}-of-{len(parts):05d}.gz", overwrite=True)
    if not parts:  # an empty split is one empty file, as Beam's sink writes it: readers find a file
        write_records(f"{split_uri}/data_tfrecord-00000-of-00001.gz", [])
    return sum(n for _, n in parts)


class ReadSplit(beam.PTransform):
    def __init__(self, uri: str, split: str):
        super().__init__()
        self.pattern = os.path.join(split_dir(uri, split), "*")

    def expand(self, p):
        return p | beam.io.ReadFromTFRecord(self.pattern) | beam.Map(to_dict)


class WriteSplit(beam.PTransform):
    """dicts -> gzipped tf.Example records in <uri>/Split-<split>/."""

    def __init__(self, uri: str, split: str):
        super().__init__()
        self.prefix = os.path.join(split_dir(uri, split), "data_tfrecord")

    def expand(self, pcoll):
        return pcoll | beam.Map(make) | beam.io.WriteToTFRecord(self.prefix, file_name_suffix=".gz")


EMBED_BATCH = 256  # images per call of a feature model's serving signature


def image_batches(uri: str, split: str, batch: int = EMBED_BATCH):
    """A split's stored image bytes, in file order, as lists of `batch` (streamed)."""
    for b in batches(uri, split, {"image": tf.string}, batch):
        yield list(b["image"])
