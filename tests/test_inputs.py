"""Bad input gets a reason naming the record, is counted, and never stops the run."""

import glob
import io
import json

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image

from collabfeat import config as config_lib
from collabfeat import feature_model, images, outcomes
from collabfeat.catalogue import ImportItems, header


def write_image(path, size, mode="RGB", fmt="PNG", colour=(200, 30, 30)):
    Image.new(mode, size, colour if mode == "RGB" else 128).save(path, format=fmt)


@pytest.fixture
def items(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    write_image(d / "a.png", (28, 28), mode="L")
    write_image(d / "b.jpg", (640, 480), fmt="JPEG")  # any size, RGB
    write_image(tmp_path / "abs.png", (50, 20))  # absolute path
    (d / "bad.png").write_bytes(b"GIF89a not really")  # corrupt
    table = tmp_path / "items.csv"
    table.write_text(
        "\n".join(
            [
                "item_id,image,label",
                "a,a.png,1",
                "b,b.jpg,",
                f"c,{tmp_path / 'abs.png'},2",
                f"u,file://{tmp_path / 'abs.png'},2",
                "d,missing.png,3",
                "e,bad.png,3",
                "a,b.jpg,1",  # duplicate id
                ",a.png,1",  # no id
                "f,a.png,seven",  # bad label
                "g,a.png",  # too few fields
                "",
            ]
        )
        + "\n"
    )
    return str(table), str(d)


def run_import(table, image_dir, tmp_path, size=32):
    out = str(tmp_path / "out")
    with beam.Pipeline() as p:
        res = p | ImportItems(table, image_dir, size)
        _ = (
            res["records"]
            | beam.Map(lambda r: json.dumps({"item_id": r["item_id"], "label": r["label"], "png": r["image"].hex()}))
            | beam.io.WriteToText(out)
        )
        _ = res["outcomes"] | outcomes.WriteOutcomes(out + "-outcomes.json")
    recs = [json.loads(line) for path in glob.glob(out + "-0*") for line in open(path)]
    return {r["item_id"]: r for r in recs}, outcomes.read(out + "-outcomes.json")


def test_item_table_rows_are_all_accounted_for(items, tmp_path):
    table, image_dir = items
    recs, result = run_import(table, image_dir, tmp_path)
    assert set(recs) == {"a", "b", "c", "u"}
    assert result["counts"] == {
        "used": 4,
        "missing_image": 1,
        "corrupt_image": 1,
        "duplicate_item": 1,
        "missing_id": 1,
        "bad_label": 1,
        "bad_row": 1,
    }
    assert recs["b"]["label"] == -1 and recs["a"]["label"] == 1
    # Every image is decoded to RGB at the configured size, whatever it was.
    for r in recs.values():
        im = Image.open(io.BytesIO(bytes.fromhex(r["png"])))
        assert im.size == (32, 32) and im.mode == "RGB"
    # The reasons name the record.
    assert "'d'" in result["examples"]["missing_image"][0] and "missing.png" in result["examples"]["missing_image"][0]
    assert "'f'" in result["examples"]["bad_label"][0] and "seven" in result["examples"]["bad_label"][0]


def test_item_table_without_required_columns_is_refused(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("id,path\n1,x.png\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['item_id', 'image'\]"):
        header(str(t))


def test_image_errors_have_reasons(tmp_path):
    with pytest.raises(images.ImageError) as e:
        images.decode(b"\x89PNG\r\n\x1a\nbroken", 32)
    assert e.value.reason == "corrupt_image"
    with pytest.raises(images.ImageError) as e:
        images.read_bytes("nope.png", str(tmp_path))
    assert e.value.reason == "missing_image"
    big = tmp_path / "big.png"
    write_image(big, (64, 64))
    with pytest.raises(images.ImageError) as e:
        images.read_bytes(str(big), max_bytes=10)
    assert e.value.reason == "image_too_large"
    px = images.decode(big.read_bytes(), 16)
    assert px.shape == (16, 16, 3) and px.dtype == np.uint8


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="mf.dimm: unknown setting"):
        config_lib.load(overrides=["mf.dimm=3"])
    with pytest.raises(ValueError, match="cnn.epochs: cannot use 'many'"):
        config_lib.load(overrides=["cnn.epochs=many"])
    with pytest.raises(ValueError, match="mf.objective must be"):
        config_lib.load(overrides=["mf.objective=als"])
    with pytest.raises(ValueError, match="mf.solver must be 'als' or 'adam', not 'wals'"):
        config_lib.load(overrides=["mf.solver=wals"])
    with pytest.raises(
        ValueError, match="index.kind must be .auto., .brute_force., .int8., .ah., .tree_bf. or .tree_ah., not .hnsw."
    ):
        config_lib.load(overrides=["index.kind=hnsw"])
    with pytest.raises(ValueError, match="serving.workers must be at least 1, not 0"):
        config_lib.load(overrides=["serving.workers=0"])
    with pytest.raises(ValueError, match="serving.batch_wait_ms must be >= 0"):
        config_lib.load(overrides=["serving.batch_wait_ms=-1"])
    y = tmp_path / "c.yaml"
    y.write_text("cnn:\n  epochs: 2\n  widths: [8, 16]\ntransform:\n  event_weights: {view: 1, like: 2}\n")
    cfg = config_lib.load(str(y), ["cnn.epochs=3"])
    assert cfg.cnn.epochs == 3 and cfg.cnn.widths == [8, 16]
    assert cfg.transform.event_weights == {"view": 1.0, "like": 2.0}
    assert config_lib.Config.from_json(cfg.to_json()) == cfg


def test_one_preprocessing_for_training_and_serving(tmp_path):
    """An image stored the way ImageImport stores it (what training, evaluation and indexing read)
    and the same file sent to the served signature give the same embedding, to 1e-5: non-square,
    upscaled, palette, grey, RGBA, grey+alpha, GIF, BMP and JPEG. The pixels are also checked
    against PIL's own decoding and resizing, an independent implementation."""
    import tensorflow as tf

    from collabfeat.catalogue import load_record
    from serving.build import export
    from trainer import cnn

    yy, xx = np.mgrid[0:90, 0:140]
    smooth = np.stack([xx * 255 // 139, yy * 255 // 89, (xx + yy) * 255 // 228], -1).astype(np.uint8)
    photo = Image.fromarray(smooth)  # 140 x 90: not square
    rgba = photo.copy()
    rgba.putalpha(Image.fromarray((xx * 255 // 139).astype(np.uint8)))
    kinds = {
        "rgb.png": (photo, "PNG"),
        "rgb.jpg": (photo, "JPEG"),
        "palette.png": (photo.convert("P"), "PNG"),
        "grey.png": (photo.convert("L"), "PNG"),
        "rgba.png": (rgba, "PNG"),
        "grey-alpha.png": (rgba.convert("LA"), "PNG"),
        "anim.gif": (photo.convert("P"), "GIF"),
        "bitmap.bmp": (photo, "BMP"),
        "tiny.png": (photo.resize((10, 7)), "PNG"),
    }
    for name, (im, fmt) in kinds.items():
        im.save(tmp_path / name, format=fmt)
    size = 32
    cfg = config_lib.load(overrides=[f"cnn.image_size={size}", "cnn.widths=[8,16]", "cnn.embedding_dim=16"])
    net = cnn.random_init(cfg.cnn)
    feature_model.save_features(net, size, str(tmp_path / "features"))  # as the trainers save a feature model
    export.export(str(tmp_path / "features"), np.eye(2, 16, dtype=np.float32), ["a", "b"], 2, str(tmp_path / "version"))
    serve = tf.saved_model.load(str(tmp_path / "version")).signatures["serving_default"]
    for name in kinds:
        status, record = load_record({"item_id": name, "image": name, "label": -1}, str(tmp_path), size, name)
        assert status == outcomes.USED, record
        stored = tf.io.decode_png(record["image"]).numpy()
        assert stored.shape == (size, size, 3)
        data = (tmp_path / name).read_bytes()
        trained = cnn.embed(net, stored[None])
        served = serve(images=tf.constant([data]))["embedding"].numpy()
        np.testing.assert_allclose(served, trained, atol=1e-5, err_msg=name)
        with Image.open(io.BytesIO(data)) as im:  # alpha composited on white, as pixels() does
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            flat = Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
            pil = np.asarray(flat.resize((size, size), Image.BILINEAR), dtype=np.float64)
        assert np.abs(stored - pil).mean() < 3.0, name


def test_formats_the_served_model_cannot_read_are_refused_with_a_reason(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(buf, format="TIFF")
    with pytest.raises(images.ImageError, match="TIFF images are not supported") as e:
        images.decode(buf.getvalue(), 16)
    assert e.value.reason == "unsupported_image"


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_transparent_pixels_are_composited_so_the_colour_hidden_under_them_never_shows(tmp_path):
    """RGBA, grey + alpha and a palette with a transparent index: whatever colour an encoder left
    under transparent pixels (random here) changes neither the preprocessed image nor the served
    embedding; a transparent pixel becomes data.background (white by default), an opaque one keeps
    its colour, a half-transparent one is the mix."""
    import tensorflow as tf

    from trainer import cnn

    rng = np.random.default_rng(0)
    h = w = 16
    alpha = np.zeros((h, w), np.uint8)
    alpha[:, 8:] = 255  # right half opaque, left half transparent
    alpha[0, 8] = 128  # one half-transparent pixel
    visible = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def rgba():  # the same visible pixels over random hidden ones
        px = np.where(alpha[..., None] > 0, visible, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        return _png(Image.fromarray(np.dstack([px, alpha]), "RGBA"))

    def grey_alpha():
        g = np.where(alpha > 0, visible[..., 0], rng.integers(0, 256, (h, w), dtype=np.uint8))
        return _png(Image.fromarray(np.dstack([g, alpha]), "LA"))

    def palette():  # index 0 is transparent, and its colour is random
        idx = np.where(alpha[..., None] > 0, 1 + (visible[..., :1] % 3), 0)[..., 0].astype(np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette(list(rng.integers(0, 256, 3)) + [10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * 756)
        buf = io.BytesIO()
        im.save(buf, format="PNG", transparency=0)
        return buf.getvalue()

    cfg = config_lib.load(overrides=["cnn.image_size=16", "cnn.widths=[8]", "cnn.embedding_dim=8"])
    feature_model.save_features(cnn.random_init(cfg.cnn), h, str(tmp_path / "features"))
    serve = tf.saved_model.load(str(tmp_path / "features")).signatures["serving_default"]
    for name, make in (("rgba", rgba), ("grey+alpha", grey_alpha), ("palette", palette)):
        first, second = make(), make()
        assert first != second, name  # the hidden colours differ ...
        a, b = images.decode(first, h), images.decode(second, h)
        np.testing.assert_array_equal(a, b, err_msg=name)  # ... and never show
        assert (a[:, :8] == 255).all(), name  # transparent: white
        emb = serve(images=tf.constant([first, second]))["embedding"].numpy()
        np.testing.assert_array_equal(emb[0], emb[1], err_msg=name)
    px = images.decode(rgba(), h)
    np.testing.assert_array_equal(px[1:, 8:], visible[1:, 8:])  # opaque: its own colour
    np.testing.assert_allclose(px[0, 8], np.round(visible[0, 8].astype(float) * 128 / 255 + 255 * 127 / 255), atol=1)
    assert (images.decode(rgba(), h, (0, 0, 0))[:, :8] == 0).all()  # another background


def test_the_background_is_a_setting_that_reaches_the_import():
    with pytest.raises(ValueError, match="data.background"):
        config_lib.load(overrides=["data.background=[255,255]"])
    assert config_lib.load(overrides=["data.background=[0,0,0]"]).data.background == [0, 0, 0]
