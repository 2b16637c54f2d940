"""The environment itself: the TFX 1.21 stack imports everywhere, including Beam workers."""

import json
import math
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from collabfeat import config as config_lib
from collabfeat import examples
from pipeline.report import find_artifact, read_report


def _probe(_):
    import os

    import numpy as np
    import scann
    import tensorflow_recommenders as tfrs
    from scann.scann_ops.py import scann_ops_pybind
    from tfx import v1 as tfx_v1  # noqa: F401

    db = np.eye(4, dtype=np.float32)
    searcher = scann_ops_pybind.builder(db, 1, "dot_product").score_brute_force().build()
    idx, _ = searcher.search(db[2])
    return {
        "pid": os.getpid(),
        "tfrs": tfrs.__version__,
        "scann": scann.__name__,
        "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
        "hit": int(idx[0]),
    }


def test_stack_imports_in_beam_multiprocessing_workers(tmp_path):
    out = str(tmp_path / "probe")
    opts = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with beam.Pipeline(options=opts) as p:
        _ = (
            p
            | beam.Create(range(4))
            | beam.Map(_probe)
            | beam.Map(json.dumps)
            | beam.io.WriteToText(out, shard_name_template="", num_shards=1)
        )
    probes = [json.loads(line) for line in open(out)]
    assert len(probes) == 4
    assert all(pr["pid"] != os.getpid() for pr in probes), "ran in the parent, not in workers"
    assert {pr["tfrs"] for pr in probes} == {"v0.7.7"}
    assert {pr["legacy_keras"] for pr in probes} == {"1"}
    assert {pr["hit"] for pr in probes} == {2}


def test_scann_tf_ops_are_stubbed_with_a_clear_message():
    from scann.scann_ops.py import scann_ops

    with pytest.raises(AttributeError, match="scann_ops_pybind"):
        scann_ops.builder


def test_scann_runs_the_simd_kernels_the_cpu_has():
    """scann 1.4.2's own CPU check answers no to every feature; serving.scann_lib switches on the kernels
    the CPU can run. Checked against numpy's CPU detection (cpuid, not /proc/cpuinfo)."""
    import numpy as np
    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    from serving import scann_lib

    if not scann_lib.X86_64:
        pytest.skip("not x86-64: ScaNN has no AVX kernels to switch on")
    assert set(scann_lib.flags()) == set(scann_lib.RULES)  # the pinned wheel exports every flag
    avx2 = cpu["AVX2"] and cpu["FMA3"]
    avx512 = avx2 and cpu["AVX512F"] and cpu["AVX512DQ"] and cpu["AVX512BW"]
    want = {"avx2": avx2, "avx512": avx512, "avx512_vnni": avx512 and cpu["AVX512VNNI"]}
    assert scann_lib.KERNELS == want
    assert {name: flag.value for name, flag in scann_lib.flags().items()} == want  # the library's own globals

    # the switched-on kernels find what ScaNN's baseline kernels find (exact search; no ties in this data)
    rng = np.random.default_rng(0)
    db = rng.standard_normal((3000, 64)).astype(np.float32)
    queries = rng.standard_normal((300, 64)).astype(np.float32)
    searcher = scann_lib.scann_ops_pybind.builder(db, 10, "dot_product").score_brute_force().build()
    fast = searcher.search_batched(queries)[0]
    flags = scann_lib.flags()
    try:
        for flag in flags.values():
            flag.value = False
        baseline = searcher.search_batched(queries)[0]
    finally:
        for name, flag in flags.items():
            flag.value = want[name]
    exact = np.argsort(-(queries @ db.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(fast, exact) and np.array_equal(baseline, exact)


def test_scann_kernels_follow_scanns_rules_and_are_never_turned_off():
    from serving import scann_lib

    if not scann_lib.X86_64:
        pytest.skip("not x86-64: ScaNN has no AVX kernels to switch on")
    flags = scann_lib.flags()
    kept = {name: flag.value for name, flag in flags.items()}
    try:
        for flag in flags.values():
            flag.value = False
        assert scann_lib.enable({"avx2"}) == {"avx2": False, "avx512": False, "avx512_vnni": False}  # FMA too
        assert scann_lib.enable({"avx2", "fma", "avx512f", "avx512bw"}) == {
            "avx2": True,
            "avx512": False,  # DQ missing
            "avx512_vnni": False,
        }
        assert scann_lib.enable(set())["avx2"]  # what is on stays on
    finally:
        for name, flag in flags.items():
            flag.value = kept[name]


def test_keras_is_keras_2():
    assert tf.keras.__name__.startswith("tf_keras") or tf.keras.__version__.startswith("2.")


ROWS = """user_id,item_id,event,timestamp
u1,i1,view,1
u1,i1,view,2
u1,i1,appreciate,3
u1,i2,view,4
u2,i1,view,5
u2,i2,view,6
u2,i3,view,7
u3,i1,view,8
u4,i2,bogus,9
,i1,view,10
"""


def _smoke_run(tmp_path, overrides):
    """CsvExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> LogTransform -> Transform on
    LocalDagRunner, with the Beam stages on runner.engine; -> what they produced."""
    import tensorflow_transform as tft
    from tfx import v1 as tfx

    from pipeline import engine
    from pipeline.pipeline import create_pipeline, run_options

    logs = tmp_path / "logs"
    logs.mkdir(parents=True)
    (logs / "logs.csv").write_text(ROWS)
    cfg = config_lib.load(
        overrides=[
            "transform.min_user_items=2",
            "transform.min_item_users=2",
            "transform.max_user_quantile=1",
            "transform.max_item_quantile=1",
            "transform.eval_fraction=0",
        ]
        + overrides
    )
    root = str(tmp_path / "root")
    with engine.started(cfg, str(tmp_path)) as engine_args:
        tfx.orchestration.LocalDagRunner().run(
            create_pipeline(
                cfg, str(logs), root, str(tmp_path / "m.sqlite"), with_catalogue=False, engine_args=engine_args
            ),
            run_options=run_options("transform", with_catalogue=False),
        )
    assert find_artifact(root, "ExampleValidator", "anomalies")
    graph = tft.TFTransformOutput(find_artifact(root, "Transform", "transform_graph"))
    users, items = graph.vocabulary_by_name("user_id"), graph.vocabulary_by_name("item_id")
    rows = list(examples.read(find_artifact(root, "Transform", "transformed_examples"), "train"))
    pairs = {(users[r["user_idx"]], items[r["item_idx"]]): (float(r["weight"]), float(r["rating"])) for r in rows}
    return {
        "report": read_report(find_artifact(root, "LogTransform", "interactions")),
        "vocabularies": (users, items),
        "pairs": pairs,
    }


def test_smoke_pipeline_through_transform_on_the_portable_engine(tmp_path):
    """The Beam stages through Beam's portability framework (a job service and a pool of SDK worker
    processes: the path of Flink, Spark and Dataflow) give what was computed by hand (the
    DirectRunner runs these stages in every other pipeline test); the jobs did
    arrive at the job service, and ran on the pool's workers."""
    from pipeline import engine

    got = _smoke_run(tmp_path / "portable", ["runner.engine=portable", "runner.direct_num_workers=2"])
    jobs = engine.jobs_completed(str(tmp_path / "portable"))
    assert jobs >= 5, jobs  # LogsExampleGen (2), StatisticsGen, LogTransform, Transform
    service_log = open(tmp_path / "portable" / "beam-job-service.log").read()
    assert service_log.count("on 2 SDK workers") == jobs, service_log[-2000:]
    pool_log = open(tmp_path / "portable" / "beam-worker-pool.log").read()
    assert pool_log.count("Starting worker with command") == 2 * jobs, pool_log[-2000:]

    # Rows: every one accounted for, with its reason.
    report = got["report"]
    assert report["rows"] == {"used": 6, "item_too_rare": 1, "user_too_rare": 1, "unknown_event": 1, "missing_user": 1}
    assert report["rows_total"] == 10
    assert report["pairs"] == {"train": 4, "eval": 0}
    users, items = got["vocabularies"]
    assert sorted(users) == [b"u1", b"u2"] and sorted(items) == [b"i1", b"i2"]
    top = math.log1p(1 + 1 + 4)  # two views and an appreciation
    want = {
        (b"u1", b"i1"): top,
        (b"u1", b"i2"): math.log1p(1),
        (b"u2", b"i1"): math.log1p(1),
        (b"u2", b"i2"): math.log1p(1),
    }
    assert set(got["pairs"]) == set(want)
    for pair, w in want.items():
        assert got["pairs"][pair][0] == pytest.approx(w, rel=1e-6)
        assert got["pairs"][pair][1] == pytest.approx(w / top, rel=1e-6)


def test_parquet_logs_and_a_catalogue_through_the_log_transform(tmp_path):
    """A user's own data: Parquet logs with other column names, an item table with images of
    any size; unknown and imageless items are counted, not dropped silently."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline, run_options

    (tmp_path / "logs").mkdir()
    (tmp_path / "img").mkdir()
    rows = [
        ("a", "x", "view"),
        ("a", "y", "view"),
        ("b", "x", "appreciate"),
        ("b", "y", "view"),
        ("b", "z", "view"),
        ("c", "ghost", "view"),
    ]
    pq.write_table(
        pa.table({"who": [r[0] for r in rows], "what": [r[1] for r in rows], "kind": [r[2] for r in rows]}),
        tmp_path / "logs" / "part-0.parquet",
    )
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "img" / "x.jpg")
    Image.new("L", (20, 20), 99).save(tmp_path / "img" / "y.png")
    (tmp_path / "items.csv").write_text("item_id,image\nx,x.jpg\ny,y.png\nz,z-missing.png\n")
    cfg = config_lib.load(
        overrides=[
            f"data.items={tmp_path / 'items.csv'}",
            f"data.image_dir={tmp_path / 'img'}",
            "data.logs_format=parquet",
            "data.user_column=who",
            "data.item_column=what",
            "data.event_column=kind",
            "transform.min_user_items=1",
            "transform.min_item_users=1",
            "transform.max_user_quantile=1",
            "transform.max_item_quantile=1",
            "transform.eval_fraction=0",
            "runner.direct_running_mode=in_memory",
        ]
    )  # multi-processing workers: tests/test_failure.py
    root = str(tmp_path / "root")
    tfx.orchestration.LocalDagRunner().run(
        create_pipeline(cfg, str(tmp_path / "logs"), root, str(tmp_path / "m.sqlite")),
        run_options=run_options("transform"),
    )
    report = read_report(find_artifact(root, "LogTransform", "interactions"))
    assert report["rows"] == {"used": 4, "unknown_item": 2}  # z has no image, ghost is not listed
    images = read_report(find_artifact(root, "ImageImport", "images"))
    assert images["catalogue"]["counts"] == {"used": 2, "missing_image": 1}
    pairs = {
        (r["user_id"], r["item_id"])
        for r in examples.read(find_artifact(root, "LogTransform", "interactions"), "train")
    }
    assert pairs == {(b"a", b"x"), (b"a", b"y"), (b"b", b"x"), (b"b", b"y")}

    # New files at the same paths (a log row more, z's image now there) are read again on the next
    # run, never answered from TFX's cache.
    rows.append(("a", "z", "view"))
    pq.write_table(
        pa.table({"who": [r[0] for r in rows], "what": [r[1] for r in rows], "kind": [r[2] for r in rows]}),
        tmp_path / "logs" / "part-0.parquet",
    )
    Image.new("RGB", (40, 30), (200, 10, 30)).save(tmp_path / "img" / "z-missing.png")
    tfx.orchestration.LocalDagRunner().run(
        create_pipeline(cfg, str(tmp_path / "logs"), root, str(tmp_path / "m.sqlite")),
        run_options=run_options("transform"),
    )
    assert read_report(find_artifact(root, "ImageImport", "images"))["catalogue"]["counts"] == {"used": 3}
    assert read_report(find_artifact(root, "LogTransform", "interactions"))["rows"] == {"used": 6, "unknown_item": 1}


def test_the_portable_engine_waits_for_its_service_not_for_whatever_answers_on_the_port(tmp_path, monkeypatch):
    """Another process's server on the pool's port (a port-0 server can get any port in the ephemeral
    range) answers connections, but the pool is not ready until it says it has bound the port; a
    service that exits while starting is named with the end of its log."""
    import socket
    import subprocess
    import sys

    from pipeline import engine

    monkeypatch.setattr(engine, "START_SECONDS", 2)
    log = tmp_path / "pool.log"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # an earlier start's line on the same port, before this start's part of the log
        log.write_text(f"Started worker pool servicer at port: localhost:{port} with executable: None\n")
        slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            with pytest.raises(RuntimeError, match=f"did not listen on port {port} within 2 s"):
                engine._wait_until_listening(
                    slow,
                    port,
                    r"Started worker pool servicer at port: localhost:{port}\b",
                    "worker pool",
                    str(log),
                    log.stat().st_size,
                )
        finally:
            slow.kill()
    log.write_text("RuntimeError: Failed to bind to address [::]:8098\n")
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    failed.wait()
    with pytest.raises(
        RuntimeError,
        match=r"worker pool exited with status 1 while starting on port 8098: "
        r"RuntimeError: Failed to bind to address \[::\]:8098",
    ):
        engine._wait_until_listening(failed, 8098, "x", "worker pool", str(log), 0)


def test_spare_ports_are_free_and_below_the_ephemeral_range():
    from pipeline import engine

    ports = engine.spare_ports(3)
    assert len(set(ports)) == 3
    assert all(10000 <= p < engine.ephemeral_ports().start and engine._port_is_free(p) for p in ports)


def test_without_the_catalogue_only_the_behaviour_path_runs():
    from pipeline.pipeline import run_options

    assert run_options("mf", with_catalogue=False).to_nodes == ["ExampleValidator", "Transform", "MFTrainer"]
    for stage in ("cnn", "evaluate", "push"):
        with pytest.raises(ValueError, match=f"stage '{stage}' needs the image catalogue: without it .runner"):
            run_options(stage, with_catalogue=False)
