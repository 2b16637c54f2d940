"""The ImageNet feature set: EfficientNet-Lite0's PyTorch weights converted into Keras.

Two independent checks of the conversion: a forward pass written here in numpy straight from the
state dict (PyTorch's NCHW layout and conventions, no Keras), and the ImageNet classes the
converted network gives real photos (scikit-image's sample photos: a cat, an espresso, a rocket,
a moped)."""

import numpy as np
import pytest
from PIL import Image

from collabfeat import feature_model, imagenet


@pytest.fixture(scope="module")
def weights():
    return imagenet.read_state_dict(imagenet.weights_path())


def photo(name: str, size: int) -> np.ndarray:
    from skimage import data

    pixels = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    im = Image.fromarray(pixels).convert("RGB")
    w, h = im.size
    m = min(w, h)
    im = im.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
    return np.asarray(im.resize((size, size), Image.BILINEAR), np.float32)


# --- the reference: PyTorch semantics in numpy (x: [C, H, W]) ---------------------------------


def conv(x, w, stride=1, groups=1):
    """torch.nn.functional.conv2d with padding k // 2 (the reference's padding)."""
    o, i, k, _ = w.shape
    p = k // 2
    x = np.pad(x, ((0, 0), (p, p), (p, p)))
    h = (x.shape[1] - k) // stride + 1
    wd = (x.shape[2] - k) // stride + 1
    out = np.zeros((o, h, wd), np.float64)
    for dy in range(k):
        for dx in range(k):
            patch = x[:, dy : dy + stride * h : stride, dx : dx + stride * wd : stride]  # [C, h, wd]
            if groups == 1:
                out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], patch)
            else:  # depthwise
                out += w[:, 0, dy, dx][:, None, None] * patch
    return out


def bn(x, w, name):
    scale = w[f"{name}.weight"] / np.sqrt(w[f"{name}.running_var"] + imagenet.BN_EPSILON)
    return (x - w[f"{name}.running_mean"][:, None, None]) * scale[:, None, None] + w[f"{name}.bias"][:, None, None]


def relu6(x):
    return np.clip(x, 0, 6)


def reference(image: np.ndarray, w):
    """uint8-valued RGB [H, W, 3] -> (1280 features, 1000 logits), as the PyTorch model computes them."""
    x = ((image / 255.0 - imagenet.MEAN) / imagenet.STD).transpose(2, 0, 1)
    x = relu6(bn(conv(x, w["_conv_stem.weight"], 2), w, "_bn0"))
    for i, (k, stride, e, c_in, c_out) in enumerate(imagenet.blocks()):
        p, y = f"_blocks.{i}.", x
        if e != 1:
            y = relu6(bn(conv(y, w[p + "_expand_conv.weight"]), w, p + "_bn0"))
        y = relu6(bn(conv(y, w[p + "_depthwise_conv.weight"], stride, groups=y.shape[0]), w, p + "_bn1"))
        y = bn(conv(y, w[p + "_project_conv.weight"]), w, p + "_bn2")
        x = x + y if stride == 1 and c_in == c_out else y
    x = relu6(bn(conv(x, w["_conv_head.weight"]), w, "_bn1"))
    features = x.mean(axis=(1, 2))
    return features, w["_fc.weight"] @ features + w["_fc.bias"]


def test_the_state_dict_is_efficientnet_lite0(weights):
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert sum(v.size for k, v in weights.items() if not k.endswith("num_batches_tracked")) > 4.6e6
    assert len([k for k in weights if k.endswith("_depthwise_conv.weight")]) == len(imagenet.blocks()) == 16
    for i, (k, _, _, _, c_out) in enumerate(imagenet.blocks()):  # kernel sizes and widths match the stages
        assert weights[f"_blocks.{i}._depthwise_conv.weight"].shape[2:] == (k, k)
        assert weights[f"_blocks.{i}._project_conv.weight"].shape[0] == c_out


def test_the_keras_network_computes_what_the_state_dict_defines(weights):
    size = 64
    net = imagenet.efficientnet_lite0(size, weights, classes=True)
    images = np.stack([photo("chelsea", size), photo("coffee", size)])
    features, logits = net.predict_on_batch(images)
    for j, image in enumerate(images):
        ref_features, ref_logits = reference(image, weights)
        np.testing.assert_allclose(features[j], ref_features, rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(logits[j], ref_logits, rtol=1e-3, atol=2e-3)


def test_real_photos_get_their_imagenet_classes(weights):
    net = imagenet.efficientnet_lite0(224, weights, classes=True)
    photos = {
        "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        "coffee": {967, 968},  # espresso, cup
        "rocket": {657, 812},  # missile, space shuttle
        "motorcycle": {665, 670},
    }  # moped, motor scooter
    _, logits = net.predict_on_batch(np.stack([photo(name, 224) for name in photos]))
    for (name, classes), row in zip(photos.items(), logits):
        top = np.argsort(-row)[:2]
        assert classes & set(top.tolist()), (name, top)
    # ... and a photo's top class is not everyone's: the logits depend on the image
    assert len({int(np.argmax(r)) for r in logits}) == len(photos)


@pytest.mark.slow
def test_the_feature_backbone_takes_the_pipelines_images_and_saves_as_a_feature_model(weights, tmp_path):
    from collabfeat import images as images_lib

    net = imagenet.backbone(32, 64, weights)
    x = np.stack([photo("chelsea", 32), photo("rocket", 32)])
    a = net.predict_on_batch(x)
    assert a.shape == (2, 1280) and (a >= 0).all()  # ReLU6 features, pooled
    feature_model.save_features(net, 32, str(tmp_path / "imagenet"))  # as Features_imagenet saves it
    b = feature_model.embed(str(tmp_path / "imagenet"), [[images_lib.encode_png(p.astype(np.uint8)) for p in x]])
    np.testing.assert_allclose(b, a / np.linalg.norm(a, axis=1, keepdims=True), atol=1e-5)


def test_a_file_that_is_not_a_legacy_state_dict_is_named(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="x.pth is not a PyTorch file in the legacy format"):
        imagenet.read_state_dict(str(bad))
