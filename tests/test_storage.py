"""Artifact I/O on a filesystem other than local disk: TensorFlow's in-process ram://, which goes
through tf.io.gfile exactly as gs:// or hdfs:// do. A pipeline root or a push_dir on a bucket needs
every report, factor table, index, feature model and pushed version written and read this way."""

import os
import uuid

import numpy as np
import pytest

from collabfeat import feature_model, images, outcomes, storage
from collabfeat.config import IndexConfig
from pipeline.components import write_report
from pipeline.report import read_report
from serving import store
from serving.build import index, push
from tests import serving_fixtures
from trainer import cnn, mf


@pytest.fixture
def root():
    path = f"ram://collabfeat-{uuid.uuid4().hex}"
    storage.makedirs(path)
    yield path
    storage.rmtree(path)


def test_reports_and_outcomes(root):
    write_report(root, {"rows": {"used": 3}, "name": "é"})
    assert read_report(root) == {"rows": {"used": 3}, "name": "é"}
    storage.write_json(f"{root}/outcomes.json", {"counts": {"used": 1}})
    assert outcomes.read(f"{root}/outcomes.json") == {"counts": {"used": 1}}
    assert sorted(storage.listdir(root)) == ["outcomes.json", "report.json"]


def test_factor_tables(root):
    rng = np.random.default_rng(0)
    factors = mf.Factors(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32), [])
    mf.save(factors, list("abcde"), list("wxyz"), f"{root}/model/factors.npz")
    got = mf.load(f"{root}/model/factors.npz")
    np.testing.assert_array_equal(got["users"], factors.users)
    np.testing.assert_array_equal(got["items"], factors.items)
    assert list(got["item_ids"]) == list("wxyz")


def test_index_map_and_feature_sets(root, tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    ids = [f"i{n}" for n in range(300)]
    searcher, settings = index.build(emb, IndexConfig())
    where = f"{root}/Indexer/index/7"
    store.save_index(searcher, settings, ids, emb, where)
    index.write_map(emb, where)
    store.write_feature_set(where, "pixels", (emb[i : i + 64] * 2 for i in range(0, 300, 64)))
    loaded = store.load_index(where)
    assert loaded["item_ids"] == ids
    np.testing.assert_array_equal(loaded["embeddings"], emb)
    assert not isinstance(loaded["embeddings"], np.memmap)  # read through a local copy, then gone
    store.save_index(searcher, settings, ids, emb, str(tmp_path))
    local = store.load_index(str(tmp_path))["embeddings"]
    assert isinstance(local, np.memmap) and np.array_equal(local, emb)  # a local index's catalogue stays on disk
    catalogue = store.load_index(str(tmp_path), searcher=False)  # what the Pusher reads: no searcher loaded
    assert catalogue["searcher"] is None and catalogue["item_ids"] == ids
    np.testing.assert_array_equal(catalogue["embeddings"], emb)
    want = store.search({"searcher": searcher, "meta": loaded["meta"]}, emb[:20], 10)
    got = store.search(loaded, emb[:20], 10)
    np.testing.assert_array_equal(got[0], want[0])
    assert storage.listdir(f"{where}/features") == ["pixels"]
    with storage.local_copy(f"{where}/features/pixels/embeddings.npy") as path:
        np.testing.assert_array_equal(np.load(path), emb * 2)
    assert len(storage.read_json(f"{where}/map.json")["x"]) == 300


def test_the_maps_neighbours_beyond_umaps_exact_size_are_the_exact_cosine_ones():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(2)
    n = index.UMAP_EXACT_BELOW + 100
    sample = (rng.normal(size=(n, 8)) * rng.uniform(0.5, 3, (n, 1))).astype(np.float32)  # norms apart
    near, dist, search = index.sample_neighbours(sample, 15)
    want_dist, want = (
        NearestNeighbors(n_neighbors=15, metric="cosine", algorithm="brute").fit(sample).kneighbors(sample)
    )
    assert search is None and near.shape == dist.shape == (len(sample), 15)
    np.testing.assert_array_equal(near[:, 0], np.arange(len(sample)))  # each point first, at distance 0
    assert (dist[:, 0] == 0).all() and (np.diff(dist, axis=1) >= -1e-6).all()
    np.testing.assert_allclose(dist, want_dist, atol=1e-5)
    assert (near[:, 1:] == want[:, 1:]).mean() > 0.999  # all but float ties
    assert index.sample_neighbours(sample[: index.UMAP_EXACT_BELOW - 1], 15) == (None, None, None)


def test_a_map_of_more_items_than_umaps_exact_size_keeps_planted_clusters_together(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16))
    cluster = np.arange(index.UMAP_EXACT_BELOW + 400) % 6
    emb = (centres[cluster] + 0.3 * rng.normal(size=(len(cluster), 16))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index.write_map(emb, str(tmp_path))
    m = storage.read_json(f"{tmp_path}/map.json")
    xy = np.c_[m["x"], m["y"]]
    d = ((xy[:500, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    d[np.arange(500), np.arange(500)] = np.inf
    assert (cluster[d.argmin(axis=1)] == cluster[:500]).mean() > 0.95  # each item's nearest on the map
    assert sorted(m["grid"]) == list(range(len(cluster)))


def test_a_feature_model_and_a_pushed_version(root, tmp_path):
    import tensorflow as tf

    cfg = serving_fixtures.small_config(f"{root}/models")
    net = cnn.random_init(cfg.cnn)
    model = feature_model.model_dir(f"{root}/CNNTrainer/model/3")
    feature_model.save_features(net, 28, model)
    _, blobs, _ = serving_fixtures.catalogue(4)
    x = np.stack([images.decode(b, 28) for b in blobs])
    np.testing.assert_allclose(feature_model.embed(model, [blobs]), cnn.embed(net, x), atol=1e-5)
    emb = np.random.default_rng(3).normal(size=(50, cfg.cnn.embedding_dim)).astype(np.float32)
    searcher, settings = index.build(emb, cfg.index)
    store.save_index(searcher, settings, [f"i{n}" for n in range(50)], emb, f"{root}/Indexer/index/4")
    version = push.push(model, f"{root}/Indexer/index/4", cfg)["destination"]
    assert version.startswith(f"{root}/models/{cfg.serving.model_name}/")
    assert store.versions_on_disk(os.path.dirname(version)) == [int(os.path.basename(version))]
    assert storage.read_json(f"{version}/{store.EXTRA}/config.json")["serving"]["max_k"] == cfg.serving.max_k
    assert store.load_index(f"{version}/{store.EXTRA}")["item_ids"][:2] == ["i0", "i1"]
    served = tf.saved_model.load(version).signatures["serving_default"]
    _, blobs, _ = serving_fixtures.catalogue(2)
    assert served(images=tf.constant(blobs))["embedding"].shape == (2, cfg.cnn.embedding_dim)


def test_embeddings_read_by_slices_equal_numpys(tmp_path, monkeypatch):
    """store.EmbeddingFile against the array it holds: rows, one row (negative too), and every row's
    score against a vector over slices of a few rows (the last one short); a wrong file is refused."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1003, 7)).astype(np.float32)
    store.write_npy(str(tmp_path / "e.npy"), [x[:500], x[500:]])
    monkeypatch.setattr(store.EmbeddingFile, "SLICE_BYTES", 10 * 7 * 4)  # 10 rows a slice
    f = store.EmbeddingFile(str(tmp_path / "e.npy"))
    v = rng.normal(size=7).astype(np.float32)
    assert len(f) == 1003 and np.array_equal(f.rows(95, 1003), x[95:]) and np.array_equal(f[-1], x[-1])
    np.testing.assert_allclose(f.scores(v), x @ v, rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError):
        f[1003]
    f.close()
    np.save(tmp_path / "d.npy", x.astype(np.float64))
    with pytest.raises(ValueError, match="float32"):
        store.EmbeddingFile(str(tmp_path / "d.npy"))
