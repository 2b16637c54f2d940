"""The real server process, queried with the official tensorflow_serving.apis client."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

from collabfeat import feature_model
from collabfeat import images as images_lib
from serving import store
from serving.client import Client
from tests.serving_fixtures import ServerProcess, catalogue, push_version, wait_for


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    push_dir = str(tmp_path_factory.mktemp("models"))
    version = push_version(push_dir)
    server = ServerProcess(os.path.dirname(version))
    client = Client(server.address)
    yield {"version": version, "server": server, "client": client}
    client.close()
    assert server.stop() == 0, "the server did not shut down cleanly"


def in_process(version_path, blobs):
    """The same model loaded in this process: embeddings, and exact search over the catalogue."""
    model = tf.saved_model.load(version_path)
    emb = model.signatures["serving_default"](images=tf.constant(blobs))["embedding"].numpy()
    extra = os.path.join(version_path, "assets.extra")
    cat = np.load(os.path.join(extra, "embeddings.npy"))
    ids = [line.strip() for line in open(os.path.join(extra, "item_ids.txt")) if line.strip()]
    return emb, cat, ids


def test_answers_match_in_process_search(served):
    ids, blobs, _ = catalogue()
    client = served["client"]
    emb, cat, cat_ids = in_process(served["version"], blobs[:4])
    np.testing.assert_allclose(client.embed(blobs[:4]), emb, atol=1e-5)

    out = client.similar(blobs[:4], 5)
    scores = emb @ cat.T
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert [[i.decode() for i in row] for row in out["ids"]] == [[cat_ids[j] for j in row] for row in exact]
    np.testing.assert_allclose(out["scores"], np.take_along_axis(scores, exact, 1), atol=1e-4)
    assert out["_version"] == int(os.path.basename(served["version"]))

    by_id = client.similar_by_id(ids[:2], 3)
    for q, row in zip(range(2), by_id["ids"]):
        s = cat @ cat[q]
        s[q] = -np.inf
        assert [i.decode() for i in row] == [cat_ids[j] for j in np.argsort(-s, kind="stable")[:3]]


def test_metadata_status_and_health(served):
    client = served["client"]
    sigs = client.metadata().signature_def
    assert {"serving_default", "similar", "similar_by_id"} <= set(sigs)
    assert set(sigs["serving_default"].inputs) == {"images"} and set(sigs["serving_default"].outputs) == {"embedding"}
    assert set(sigs["similar"].inputs) == {"images", "k"}
    [status] = client.status()
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.version == int(os.path.basename(served["version"]))
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def raw(client, signature, inputs, model="collabfeat", version=None, label=""):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label:
        req.model_spec.version_label = label
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v if isinstance(v, type(req.inputs[k])) else tf.make_tensor_proto(v))
    return client.predict_stub.Predict(req, timeout=30)


def _short_k():
    """A DT_INT32 scalar whose tensor_content holds 2 bytes, not 4."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    return tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_content=b"\x01\x00")


BAD = [
    (
        "malformed tensor",
        "similar",
        {"images": "GOOD", "k": _short_k()},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'k' is not a valid tensor: tensor_content has 2 bytes",
    ),
    (
        "non-image",
        "similar",
        {"images": np.array([b"not an image"], object), "k": np.int32(3)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "images[0] is not an image",
    ),
    (
        "empty tensor",
        "serving_default",
        {"images": np.array([], object)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    ),
    (
        "wrong dtype",
        "serving_default",
        {"images": np.zeros((1, 28, 28, 3), np.float32)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be DT_STRING",
    ),
    (
        "scalar images",
        "serving_default",
        {"images": np.array(b"x", object)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "rank 1",
    ),
    ("missing input", "similar", {"images": "GOOD"}, {}, grpc.StatusCode.INVALID_ARGUMENT, "missing input 'k'"),
    (
        "extra input",
        "serving_default",
        {"images": "GOOD", "zoom": np.int32(2)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "zoom",
    ),
    (
        "unknown signature",
        "classify",
        {"images": "GOOD"},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "signature 'classify' not found",
    ),
    ("unknown model", "serving_default", {"images": "GOOD"}, {"model": "nope"}, grpc.StatusCode.NOT_FOUND, "'nope'"),
    (
        "unknown version",
        "serving_default",
        {"images": "GOOD"},
        {"version": 7},
        grpc.StatusCode.NOT_FOUND,
        "no version 7",
    ),
    (
        "version label",
        "serving_default",
        {"images": "GOOD"},
        {"label": "stable"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "labels",
    ),
    (
        "k = 0",
        "similar",
        {"images": "GOOD", "k": np.int32(0)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be in [1, 50]",
    ),
    (
        "k < 0",
        "similar_by_id",
        {"ids": np.array([b"t00001"], object), "k": np.int64(-2)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be",
    ),
    (
        "k too large",
        "similar",
        {"images": "GOOD", "k": np.int32(51)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be in [1, 50]",
    ),
    (
        "k not an int",
        "similar",
        {"images": "GOOD", "k": np.float32(3)},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "DT_INT32 or DT_INT64",
    ),
    (
        "unknown item",
        "similar_by_id",
        {"ids": np.array([b"nope"], object), "k": np.int32(3)},
        {},
        grpc.StatusCode.NOT_FOUND,
        "'nope'",
    ),
    ("truncated png", "serving_default", {"images": "TRUNCATED"}, {}, grpc.StatusCode.INVALID_ARGUMENT, "images[1]"),
    (
        "unsupported format",
        "serving_default",
        {"images": "TIFF"},
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "TIFF is not supported",
    ),
    ("too many images", "serving_default", {"images": "MANY"}, {}, grpc.StatusCode.INVALID_ARGUMENT, "more than 256"),
    ("oversized message", "serving_default", {"images": "HUGE"}, {}, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


def _materialise(value, good):
    import io

    from PIL import Image

    if isinstance(value, str):
        if value == "GOOD":
            return np.array([good], object)
        if value == "TRUNCATED":
            return np.array([good, good[: len(good) // 2]], object)
        if value == "TIFF":
            buf = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buf, format="TIFF")
            return np.array([buf.getvalue()], object)
        if value == "MANY":
            return np.array([good] * 257, object)
        if value == "HUGE":
            return np.array([os.urandom(20 << 20)], object)
    return value


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_status_codes(served, case):
    _, signature, inputs, spec, code, message = case
    _, blobs, _ = catalogue(1)
    inputs = {k: _materialise(v, blobs[0]) for k, v in inputs.items()}
    with pytest.raises(grpc.RpcError) as err:
        raw(served["client"], signature, inputs, **spec)
    assert err.value.code() == code, err.value.details()
    assert message in (err.value.details() or "")
    # ... and the server goes on answering.
    assert served["client"].embed(blobs).shape == (1, 16)


def test_cli_query(served):
    _, blobs, _ = catalogue(2)
    path = os.path.join(os.path.dirname(served["version"]), "..", "q.png")
    with open(path, "wb") as f:
        f.write(blobs[1])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "collabfeat",
            "query",
            path,
            "--k",
            "3",
            "--id",
            "t00000",
            "--server",
            served["server"].address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2 and all(len(line["neighbours"]) == 3 for line in lines)
    assert lines[0]["neighbours"][0]["item_id"] == "t00001"  # the image itself is in the catalogue
    bad = subprocess.run(
        [sys.executable, "-m", "collabfeat", "query", "--id", "nope", "--server", served["server"].address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr


def test_no_model_then_hot_load_and_swap_under_load(tmp_path):
    base = tmp_path / "models" / "collabfeat"
    base.mkdir(parents=True)
    server = ServerProcess(str(base))
    client = Client(server.address)
    try:
        _, blobs, _ = catalogue(2)
        with pytest.raises(grpc.RpcError) as err:
            client.embed(blobs)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(client.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING

        first = int(os.path.basename(push_version(str(tmp_path / "models"), seed=3)))
        wait_for(
            lambda: health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING,
            what="the first version to load",
        )
        assert client.similar(blobs, 3)["_version"] == first

        # Hammer the server from 4 threads while a second version is pushed and swapped in.
        seen, errors, stop = set(), [], threading.Event()

        def load():
            c = Client(server.address)
            while not stop.is_set():
                try:
                    seen.add(int(c.similar(blobs, 3)["_version"]))
                except grpc.RpcError as e:
                    errors.append(f"{e.code()}: {e.details()}")
            c.close()

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        second = int(os.path.basename(push_version(str(tmp_path / "models"), seed=11)))
        wait_for(lambda: second in seen, what="the second version to be served")
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        assert {first, second} <= seen and second > first
        # A half-written version (no rename yet) is never picked up; removing a version unloads it.
        (base / ".tmp-99999999999").mkdir()
        shutil.rmtree(base / str(second))
        wait_for(lambda: client.similar(blobs, 3)["_version"] == first, what="fallback to the first version")
    finally:
        client.close()
        assert server.stop() == 0


def test_batcher_batches_concurrent_calls_and_isolates_a_bad_one():
    """Concurrent calls share batches; a lone call runs alone; a call that fails its batch fails alone."""
    from serving.batching import Batcher

    sizes, gate = [], threading.Event()

    def fn(x):
        sizes.append(len(x))
        gate.wait(5)  # the first batch runs until every other call has queued
        if (x < 0).any():
            raise ValueError("negative")
        return x * 2

    batcher = Batcher(fn, batch_size=8)
    results, errors = {}, {}

    def call(i):
        try:
            results[i] = int(batcher(np.array([i]))[0])
        except ValueError as e:
            errors[i] = str(e)

    values = [0] + list(range(1, 20)) + [-1]
    threads = [threading.Thread(target=call, args=(v,), daemon=True) for v in values]
    threads[0].start()
    wait_for(lambda: sizes == [1], what="the first call to lead")
    for t in threads[1:]:
        t.start()
    wait_for(lambda: len(batcher.pending) == len(values) - 1, what="the other calls to queue")
    gate.set()
    deadline = time.monotonic() + 20
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a call hung"
    assert results == {v: 2 * v for v in values if v >= 0} and errors == {-1: "negative"}
    # 1 alone, then the 20 queued ones in batches of at most 8 (the one holding -1 retried call by call).
    assert sizes[0] == 1 and max(sizes) == 8 and sum(s for s in sizes if s > 1) == 20
    assert batcher.leading is False and batcher.pending == []
    assert batcher(np.array([5]))[0] == 10 and sizes[-1] == 1


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    version = push_version(str(tmp_path / "models"))
    server = ServerProcess(
        os.path.dirname(version), "--set", f"serving.tls_cert={cert}", "--set", f"serving.tls_key={key}"
    )
    try:
        _, blobs, _ = catalogue(1)
        secure = Client(server.address, tls_ca=str(cert))
        assert secure.embed(blobs).shape == (1, 16)
        secure.close()
        plain = Client(server.address, timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            plain.embed(blobs)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        server.stop()


def test_pushed_savedmodel_has_stock_ops_and_documented_signatures(tmp_path):
    version = push_version(str(tmp_path / "models"))
    cli = shutil.which("saved_model_cli")
    assert cli, "TF's saved_model_cli is part of the environment"
    out = subprocess.run([cli, "show", "--all", "--dir", version], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "signature_def['serving_default']" in text and "signature_def['similar']" in text
    assert "inputs['images'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in text
    assert "outputs['embedding'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 16)" in text
    assert "inputs['k'] tensor_info:\n        dtype: DT_INT32\n        shape: ()" in text
    # Every op of the graph and its functions is one stock TensorFlow registers.
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(open(os.path.join(version, "saved_model.pb"), "rb").read())
    graph = sm.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    functions = {f.signature.name for f in graph.library.function}
    unknown = sorted(op for op in ops - functions if op_def_registry.get(op) is None)
    assert unknown == []
    assert {"DecodeImage", "TopKV2", "MatMul"} <= ops


def test_a_worse_model_is_not_pushed_and_the_served_version_stays(tmp_path):
    """The push guard (serving/build/push.py): a model that retrieves worse on held-out labelled images
    than the version being served is not pushed, and the server keeps answering from the served
    version; one as good is pushed. The served version's score is checked against precision@10
    computed here from the in-process CNN."""
    from serving.build import push
    from tests.serving_fixtures import small_config
    from trainer import cnn

    push_dir = str(tmp_path / "models")
    first = push_version(push_dir, seed=3)  # a random-init CNN: far above chance here
    model_dir = os.path.dirname(first)
    cfg = small_config(push_dir)
    cfg.cnn.seed = 3
    _, blobs, labels = catalogue(400)
    held_out = {"category": (blobs[300:], labels[300:])}  # not the 300 catalogue images
    server = ServerProcess(model_dir)
    client = Client(server.address)
    try:
        wait_for(
            lambda: _served_version(client, blobs[:1]) == int(os.path.basename(first)),
            what="the first version to be served",
        )
        worse = cnn.random_init(cfg.cnn)  # the same CNN, its last layer wiped
        for w in worse.layers[-1].weights:
            w.assign(tf.zeros_like(w))
        refused = push.push(feature_model.Embedder(worse, 28), os.path.join(first, store.EXTRA), cfg, held_out)
        c = refused["compared"]
        assert not refused["pushed"] and refused["destination"] is None
        assert c["served_version"] == int(os.path.basename(first)) and c["images"] == {"category": 100}
        assert c["candidate"]["precision@10"] < c["served"]["precision@10"]
        assert f"below the served version {c['served_version']}" in refused["why"]
        assert store.versions_on_disk(model_dir) == [c["served_version"]]
        assert [n for n in os.listdir(model_dir) if n.startswith(".")] == []
        time.sleep(1.0)  # three of the server's polls
        assert _served_version(client, blobs[:1]) == c["served_version"]
        assert [s.version for s in client.status()] == [c["served_version"]]

        # Independently: precision@10 of the served CNN, each held-out image against the other 99.
        emb = cnn.embed(cnn.random_init(cfg.cnn), np.stack([images_lib.decode(b, 28) for b in held_out["category"][0]]))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        hits = []
        for q in range(100):
            sims = emb @ emb[q]
            sims[q] = -np.inf
            hits.append(np.mean(held_out["category"][1][np.argsort(-sims)[:10]] == held_out["category"][1][q]))
        assert c["served"]["precision@10"] == pytest.approx(np.mean(hits), abs=0.01)
        assert c["served"]["precision@10"] > 0.3 > c["candidate"]["precision@10"]

        same = push.push(
            feature_model.Embedder(cnn.random_init(cfg.cnn), 28), os.path.join(first, store.EXTRA), cfg, held_out
        )
        assert same["pushed"] and same["compared"]["candidate"] == same["compared"]["served"]
        wait_for(lambda: _served_version(client, blobs[:1]) == same["version"], what="the equal version to be served")
    finally:
        client.close()
        server.stop()


def _served_version(client, blobs):
    try:
        return int(client.similar(blobs, 1)["_version"])
    except grpc.RpcError:
        return None


def test_a_version_holds_the_index_files_as_links_on_one_filesystem_else_as_copies(tmp_path, monkeypatch):
    """The Pusher puts the Indexer's files into the version as hard links (no bytes copied, none
    stored twice, the artifact never written again); where a link cannot be made (another
    filesystem: EXDEV) they are copied. Either way the version is whole and answers the same."""
    from serving.build import index, push
    from tests.serving_fixtures import small_config
    from trainer import cnn

    cfg = small_config(str(tmp_path / "models"))
    net = feature_model.Embedder(cnn.random_init(cfg.cnn), cfg.cnn.image_size)
    emb = np.random.default_rng(5).normal(size=(60, cfg.cnn.embedding_dim)).astype(np.float32)
    src = str(tmp_path / "index")
    store.save_index(*index.build(emb, cfg.index), [f"i{n}" for n in range(60)], emb, src)
    files = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
    assert "embeddings.npy" in files and any(f.startswith("scann/") for f in files)

    linked = os.path.join(push.push(net, src, cfg)["destination"], store.EXTRA)
    for f in files:
        assert os.path.samefile(os.path.join(src, f), os.path.join(linked, f)), f

    def no_link(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    copied = os.path.join(push.push(net, src, cfg)["destination"], store.EXTRA)
    for f in files:
        assert not os.path.samefile(os.path.join(src, f), os.path.join(copied, f)), f
        assert open(os.path.join(src, f), "rb").read() == open(os.path.join(copied, f), "rb").read(), f

    shutil.rmtree(src)  # the versions do not depend on the artifact's directory
    for extra in (linked, copied):
        idx = store.load_index(extra)
        nn, _ = idx["searcher"].search_batched(emb[:10], final_num_neighbors=1)
        assert [idx["item_ids"][n[0]] for n in nn] == [f"i{n}" for n in range(10)]
