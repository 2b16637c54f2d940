"""TensorProto <-> numpy for the server and the client, without per-element Python.

`tf.make_tensor_proto` and `tf.make_ndarray` cost 20-50 us each even for a scalar (dtype lookups,
conversions through lists); at a few hundred microseconds per request that was a large part of
the gRPC path. Here numeric tensors travel as `tensor_content` (raw little-endian bytes, which TF
Serving and `tf.make_ndarray` read) and strings as `string_val`. Decoding follows TF's rules for
every encoding a client may send (tensor_content, or the typed *_val fields, where fewer values
than elements repeat the last one, as TF's C++ Tensor::FromProto does), and fails with
`ValueError` naming what is wrong. Dtypes other than these go through TF's own functions.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

NUMERIC = {  # dtype enum -> (numpy dtype, the *_val field that carries it)
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
}
ENUM = {dtype.str: enum for enum, (dtype, _) in NUMERIC.items()}
ENUM[np.dtype("=f4").str] = types_pb2.DT_FLOAT


def to_proto(value) -> tensor_pb2.TensorProto:
    arr = np.asarray(value)
    proto = tensor_pb2.TensorProto()
    for d in arr.shape:
        proto.tensor_shape.dim.add(size=d)
    if arr.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        values = arr.ravel().tolist()
        try:
            proto.string_val.extend(values)
        except TypeError:  # str (or other) elements: UTF-8 text
            del proto.string_val[:]
            proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values)
        return proto
    dtype = arr.dtype.newbyteorder("<")
    if dtype.str not in ENUM:
        import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

        return tf.make_tensor_proto(arr)
    proto.dtype = ENUM[dtype.str]
    proto.tensor_content = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    return proto


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    if proto.tensor_shape.unknown_rank:
        raise ValueError("the tensor has an unknown rank")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise ValueError(f"the tensor's shape {shape} has a negative dimension")
    n = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        if proto.tensor_content:
            raise ValueError("a DT_STRING tensor cannot use tensor_content")
        return _fill(list(proto.string_val), n, shape, object, b"")
    if proto.dtype not in NUMERIC:
        import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

        return tf.make_ndarray(proto)
    dtype, field = NUMERIC[proto.dtype]
    content = proto.tensor_content
    if content:
        if len(content) != n * dtype.itemsize:
            raise ValueError(
                f"tensor_content has {len(content)} bytes; shape {shape} of "
                f"{types_pb2.DataType.Name(proto.dtype)} needs {n * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=dtype).reshape(shape).copy()
    return _fill(getattr(proto, field), n, shape, dtype, 0)


def _fill(values, n: int, shape, dtype, zero) -> np.ndarray:
    """TF's rule for the typed fields: fewer values than elements repeat the last (none: zeros)."""
    if len(values) > n:
        raise ValueError(f"{len(values)} values for shape {shape} ({n} elements)")
    out = np.empty(n, dtype=dtype)
    out[: len(values)] = values
    out[len(values) :] = values[-1] if len(values) else zero
    return out.reshape(shape)
