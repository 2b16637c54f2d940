"""The serving codec against TensorFlow's own make_tensor_proto / make_ndarray."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving import tensors

VALUES = [
    np.float32(1.5),
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.zeros((0, 16), np.float32),
    np.array([[1, -2], [3, 2**31 - 1]], np.int32),
    np.int64(-(2**40)),
    np.arange(5, dtype=np.int64),
    np.linspace(0, 1, 6).reshape(2, 3),
    np.array([b"a", b"", b"\x00\xff"], object),
    np.array([["x", "y"], ["\u00e9", "z"]], object),
    np.array(b"scalar", object),
    np.array([True, False]),
    np.arange(4, dtype=np.uint8),
    np.arange(3, dtype=np.float16),
]


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    if a.dtype == object:
        assert b.dtype == object
        assert [bytes(x) if isinstance(x, bytes) else x.encode() for x in a.ravel()] == list(b.ravel())
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", VALUES, ids=[f"{np.asarray(v).dtype}{np.asarray(v).shape}" for v in VALUES])
def test_round_trips_agree_with_tensorflow(value):
    ours = tensors.to_proto(value)
    _same(value, tf.make_ndarray(ours))  # TF reads what we write
    _same(value, tensors.from_proto(tf.make_tensor_proto(value)))  # we read what TF writes
    _same(value, tensors.from_proto(ours))


def test_every_encoding_a_client_may_send():
    # The typed fields, as other clients write them; fewer values than elements repeat the last.
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[7])
    p.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(tensors.from_proto(p), tf.make_ndarray(p))
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    p.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tensors.from_proto(p), [1.0, 2.0])
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)  # no values: zeros, as TF does
    p.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(tensors.from_proto(p), [0, 0])
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a", b"b"])
    p.tensor_shape.dim.add(size=3)
    assert list(tensors.from_proto(p)) == list(tf.make_ndarray(p)) == [b"a", b"b", b"b"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("content too short", "needs 12"),
        ("too many values", r"3 values for shape \[2\]"),
        ("negative dim", "negative"),
        ("unknown rank", "unknown rank"),
        ("string content", "tensor_content"),
    ],
)
def test_malformed_tensors_name_the_problem(case, message):
    p = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    if case == "content too short":
        p.tensor_shape.dim.add(size=3)
        p.tensor_content = b"\x00" * 8
    elif case == "too many values":
        p.tensor_shape.dim.add(size=2)
        p.float_val.extend([1, 2, 3])
    elif case == "negative dim":
        p.tensor_shape.dim.add(size=-1)
    elif case == "unknown rank":
        p.tensor_shape.unknown_rank = True
    else:
        p.dtype = types_pb2.DT_STRING
        p.tensor_content = b"abc"
    with pytest.raises(ValueError, match=message):
        tensors.from_proto(p)
