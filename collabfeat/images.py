"""Images: reading from paths or URIs, decoding to fixed-size RGB, and the embedded Fashion-MNIST."""

from __future__ import annotations

import gzip
import io
import os
import re
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

FASHION_DIR = os.environ.get("COLLABFEAT_FASHION_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MAX_IMAGE_BYTES = 32 << 20
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageError(ValueError):
    """A bad image; `reason` is a short machine-readable tag for the reject counts."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def read_bytes(ref: str, base_dir: str = "", max_bytes: int = MAX_IMAGE_BYTES, timeout: float = 20.0) -> bytes:
    """The bytes of an image named by a path (relative to base_dir) or a URI (file, gs, http(s), ...)."""
    ref = (ref or "").strip()
    if not ref:
        raise ImageError("missing_image", "no image given")
    scheme = urllib.parse.urlparse(ref).scheme
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(ref, timeout=timeout) as resp:
                data = resp.read(max_bytes + 1)
        else:
            if scheme == "file":
                ref = urllib.parse.urlparse(ref).path
            elif not scheme and base_dir and not os.path.isabs(ref):
                ref = os.path.join(base_dir, ref)
            import tensorflow as tf  # lazy: TensorFlow only to read files (gfile: local paths and gs:// alike)

            if not tf.io.gfile.exists(ref):
                raise ImageError("missing_image", f"no image file at {ref}")
            with tf.io.gfile.GFile(ref, "rb") as f:
                data = f.read(max_bytes + 1)
    except ImageError:
        raise
    except Exception as e:  # network and filesystem errors alike
        raise ImageError("unreadable_image", f"cannot read {ref}: {e}") from None
    if len(data) > max_bytes:
        raise ImageError("image_too_large", f"{ref} is larger than {max_bytes} bytes")
    if not data:
        raise ImageError("corrupt_image", f"{ref} is empty")
    return data


FORMATS = ("PNG", "JPEG", "GIF", "BMP")  # what tf.io.decode_image reads


WHITE = (255, 255, 255)


def pixels(data, size, background=WHITE):
    """THE preprocessing, in TensorFlow ops: encoded image bytes (a string scalar tensor) -> uint8 RGB
    [size, size, 3]. Decoded by tf.io.decode_image with the channels the image has (an animation's
    first frame); grey becomes RGB; an alpha channel (RGBA, grey + alpha, a palette with a
    transparent index) is composited over `background` (RGB 0-255), so that whatever colour an
    encoder left under transparent pixels never shows; then resized with antialiasing and rounded
    to uint8. The feature models run this function (collabfeat/feature_model.py); ImageImport stores its
    output, from which training, evaluation and indexing read; the explorer uses it for uploads and
    thumbnails. So every image is preprocessed the same way everywhere."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    img = tf.cast(tf.io.decode_image(data, channels=0, expand_animations=False), tf.float32)
    channels = tf.shape(img)[-1]
    colour = tf.cond(channels < 3, lambda: tf.tile(img[..., :1], [1, 1, 3]), lambda: img[..., :3])
    alpha = tf.cond(tf.equal(channels % 2, 0), lambda: img[..., -1:] / 255.0, lambda: tf.ones_like(img[..., :1]))
    img = colour * alpha + tf.cast(background, tf.float32) * (1.0 - alpha)
    img = tf.image.resize(img, tf.stack([size, size]), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)


_PIXELS = None


def _pixels_fn():
    global _PIXELS
    if _PIXELS is None:
        import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

        _PIXELS = tf.function(
            pixels,
            input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32), tf.TensorSpec([3], tf.float32)],
        )
    return _PIXELS


def decode(data: bytes, size: int, background=WHITE) -> np.ndarray:
    """Image bytes -> uint8 RGB array [size, size, 3], through pixels() (the served model's own
    preprocessing). PIL checks the image first, so that a bad one gets a reason: corrupt_image,
    image_too_large, or unsupported_image (a format TensorFlow, and so the served model, cannot read)."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt = im.format
    except Image.DecompressionBombError as e:
        raise ImageError("image_too_large", str(e)) from None
    except Exception as e:
        why = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
        raise ImageError("corrupt_image", f"not a decodable image ({why})") from None
    if fmt not in FORMATS:
        raise ImageError(
            "unsupported_image",
            f"{fmt} images are not supported: the served model (TensorFlow's decode_image) reads {', '.join(FORMATS)}",
        )
    try:
        return _pixels_fn()(tf.constant(data), tf.constant(size, tf.int32), tf.constant(background, tf.float32)).numpy()
    except tf.errors.InvalidArgumentError as e:
        raise ImageError("corrupt_image", f"TensorFlow cannot decode this {fmt} image: {e.message[:300]}") from None


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of Debian's dataset-fashion-mnist."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(images):
        raise FileNotFoundError(
            f"{images} not found: the Debian package dataset-fashion-mnist provides it "
            "(installed in the project's environment by env/run)"
        )
    return _read_idx(images), _read_idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
