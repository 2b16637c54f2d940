"""Request checks and errors: what a request to the server may hold, and the gRPC status it gets when it does not."""

from __future__ import annotations

import io

import grpc
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import types_pb2

from collabfeat import images as images_lib
from collabfeat.config import ServingConfig
from collabfeat.images import MAX_IMAGE_PIXELS
from serving import tensors

SIGNATURES = ("serving_default", "similar", "similar_by_id")


IMAGE_FORMATS = set(images_lib.FORMATS)  # what tf.io.decode_image reads


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_images(images: np.ndarray) -> None:
    """Header checks before any decoding: a real image, a format TF decodes, a sane size."""
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
        except Exception:
            raise invalid(f"images[{i}] is not an image ({len(data)} bytes)") from None
        if fmt not in IMAGE_FORMATS:
            raise invalid(f"images[{i}]: {fmt} is not supported (use one of {sorted(IMAGE_FORMATS)})")
        if w * h > MAX_IMAGE_PIXELS:
            raise invalid(f"images[{i}] has {w}x{h} pixels, more than {MAX_IMAGE_PIXELS}")


def first_undecodable(images: np.ndarray) -> int | None:
    for i, data in enumerate(images):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            return i
    return None


def read_input(inputs, name: str, dtypes, rank: int, cfg: ServingConfig) -> np.ndarray:
    if name not in inputs:
        raise invalid(f"missing input {name!r}")
    proto = inputs[name]
    if proto.dtype not in dtypes:
        want = " or ".join(types_pb2.DataType.Name(d) for d in dtypes)
        raise invalid(f"input {name!r} must be {want}, not {types_pb2.DataType.Name(proto.dtype)}")
    try:
        value = tensors.from_proto(proto)
    except Exception as e:
        raise invalid(f"input {name!r} is not a valid tensor: {e}") from None
    if value.ndim != rank:
        raise invalid(f"input {name!r} must have rank {rank}, not shape {list(value.shape)}")
    if rank == 1:
        if len(value) == 0:
            raise invalid(f"input {name!r} is empty")
        if len(value) > cfg.max_images:
            raise invalid(f"input {name!r} has {len(value)} entries, more than {cfg.max_images}")
    return value


INT_TYPES = (types_pb2.DT_INT32, types_pb2.DT_INT64)


EXPECTED = {"serving_default": {"images"}, "similar": {"images", "k"}, "similar_by_id": {"ids", "k"}}
