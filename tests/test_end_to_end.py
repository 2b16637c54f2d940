"""The whole pipeline on a tiny configuration of the default data, and the pushed artefacts."""

import dataclasses
import json
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from collabfeat import config as config_lib
from pipeline import supervise
from pipeline.report import format_report
from serving import store
from trainer.evaluate import overall

TINY = [
    "simulator.n_users=600",
    "simulator.n_items=500",
    "simulator.n_eval_images=200",
    "simulator.mean_views_per_user=25",
    "cnn.image_size=16",
    "cnn.widths=[8,16]",
    "cnn.embedding_dim=16",
    "cnn.epochs=2",
    "cnn.clusters=6",
    "eval.baseline_epochs=1",
    "mf.epochs=10",
    "mf.dim=16",
    "simulator.n_transfer_images=150",
    "eval.imagenet_size=32",
    "eval.bless_margin=-1",  # a 2-epoch CNN is not meant to be good: push it anyway, check the plumbing
    # the opt-in feature sets too (pseudo-classes, rotation), for their plumbing; not imagenet_regression (slow)
    "eval.baselines=[pseudo_class,supervised,style_supervised,imagenet,rotation,random,pixels]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    # ALS from row buckets on disk, LogTransform in several hash buckets of users, and CNN epochs
    # bounded below the catalogue's size: the large-data paths.
    # Beam in-process: every Beam stage runs on multi-processing workers in tests/test_failure.py.
    cfg = config_lib.load(
        overrides=TINY
        + [
            "mf.bucket_pairs=4000",
            "transform.bucket_rows=4000",
            "cnn.epoch_images=300",
            "runner.direct_running_mode=in_memory",
            "runner.direct_num_workers=1",
            f"runner.output_dir={out}",
            f"serving.push_dir={out}/models",
        ]
    )
    lines = []
    temp = tempfile.gettempdir()
    before = set(os.listdir(temp))
    report = supervise.run(cfg, "push", str(out / "pipeline.log"), echo=lines.append)
    left = {name: _size(os.path.join(temp, name)) for name in set(os.listdir(temp)) - before}
    return cfg, report, lines, left


def _size(path):
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(path)
        for f in files
        if not os.path.islink(os.path.join(d, f))
    )


def test_the_run_leaves_nothing_of_size_in_the_temp_dir(run):
    # TFX used to build a 50 MB sdist of itself there for every Beam component and leave it.
    *_, left = run
    assert sum(left.values()) < 1_000_000, sorted(left.items(), key=lambda kv: -kv[1])[:5]


def test_report_accounts_for_everything(run):
    cfg, report, *_ = run
    sheet = report["datasheet"]
    logs = report["logs"]
    assert logs["rows_total"] == sheet["rows"]  # every log row is used or has a reason
    assert logs["rows"]["used"] > 0.8 * sheet["rows"]
    assert logs["rows"]["unknown_item"] >= 1 and logs["rows"]["missing_user"] >= 1
    cat = report["images"]["catalogue"]["counts"]
    assert sum(cat.values()) == sheet["images"]["catalogue"]  # every drawing of the catalogue's emoji
    assert cfg.simulator.n_items - 3 <= sheet["images"]["catalogue"] <= cfg.simulator.n_items
    assert cat["used"] == sheet["images"]["catalogue"] - cfg.simulator.bad_image_count
    agree = report["mf"]["agreement@10"]
    assert agree["style"]["value"] > 1.5 * agree["style"]["chance"]  # behaviour follows style ...
    assert agree["category"]["value"] > agree["category"]["chance"]  # ... and category, less sharply
    assert report["mf"]["als_buckets"]["users"] > 1 and report["mf"]["als_buckets"]["items"] > 1
    assert logs["buckets"] > 1 and logs["buckets"] == -(-sheet["rows"] // cfg.transform.bucket_rows)
    assert report["mf"]["recall@20"] > report["mf"]["recall@20_popularity"]
    # Catalogue images without a factor are dropped from the CNN's training stream, whose declared
    # size (the epoch bound's input) is checked while it streams.
    assert report["cnn"]["without_factor (never seen, or filtered out)"] >= 1
    assert report["cnn"]["with_factor"] > cfg.cnn.epoch_images
    # Every component of this run, timed and measured by the supervisor (pipeline/supervise.py).
    comps = report["components"]
    assert {
        "LogsExampleGen",
        "ImageImport",
        "LogTransform",
        "Transform",
        "MFTrainer",
        "CNNTrainer",
        "Evaluator",
        "Indexer",
        "Pusher",
    } <= set(comps)
    # Each feature set compared was made by a node of its own, and scored from its model.
    kinds = ["pseudo_class", "supervised", "style_supervised", "imagenet", "rotation", "random", "pixels"]
    assert {f"Features_{k}" for k in kinds} <= set(comps)
    assert set(report["features"]) == set(kinds) and all(f["trained"] for f in report["features"].values())
    assert len(report["features"]["supervised"]["losses"]) == cfg.eval.baseline_epochs
    assert report["features"]["style_supervised"]["images"] == cat["used"]  # every image has a style
    assert report["features"]["imagenet"]["losses"] == []
    assert report["evaluation"]["models"] == {
        name: os.path.join(
            report["artifacts"]["CNNTrainer" if name == "regression" else f"Features_{name}"]["model"][0],
            "Format-Serving",
        )
        for name in ["regression"] + kinds
    }
    assert set(report["index"]["feature_sets"]) == {"regression", *kinds}
    # Sets of more dims than the explorer keeps (raw pixels, ImageNet's) are stored projected onto index.explorer_dims.
    reduced = report["index"]["reduced_sets"]
    assert {"pixels", "imagenet"} <= set(reduced) and all(r["stored dims"] <= 128 < r["dims"] for r in reduced.values())
    assert all(0 < r["variance kept"] <= 1 and 0 <= r["neighbours kept@10"] <= 1 for r in reduced.values())
    assert all(c["state"] == "complete" and c["seconds"] >= 0 for c in comps.values())
    assert all(comps[c]["seconds"] > 0 for c in ("LogTransform", "MFTrainer", "CNNTrainer", "Evaluator"))
    # A component that ran longer than the longest time between two memory samples has its peak.
    gap = report["memory_samples"]["largest gap s"]
    # (The gap grows when the machine is busy: sampling waits 20x what reading the memory took.)
    assert report["memory_samples"]["count"] > 10 and 0 < gap < 15
    sampled = [c for c in comps.values() if c["seconds"] > gap]
    longest = max(comps.values(), key=lambda c: c["seconds"])
    assert longest in sampled and all(100 < c["peak_rss_mb"] <= report["peak_rss_mb"] for c in sampled)
    ev = report["evaluation"]
    table = ev["table"]
    assert set(table) == {"regression", *kinds}
    # The paper's table: every feature set on each facet, each facet with its own images and chance.
    assert set(ev["facets"]) == {"style", "unseen_style", "category", "transfer"}
    assert ev["facets"]["category"]["table"] == table
    held = sheet["images"]["held_out"]
    assert ev["facets"]["style"]["images"] == held and ev["facets"]["style"]["queries"] == held
    assert ev["facets"]["style"]["classes"] == len(cfg.simulator.vendors)
    # the unseen vendor's drawings query the pool of them and the held-out ones
    unseen = ev["facets"]["unseen_style"]
    assert unseen["split"] == "heldout+unseen" and unseen["queries"] == sheet["images"]["unseen"]
    assert unseen["images"] == held + sheet["images"]["unseen"] and unseen["classes"] == len(cfg.simulator.vendors) + 1
    assert unseen["chance"] == pytest.approx((unseen["queries"] - 1) / (unseen["images"] - 1))
    assert ev["facets"]["transfer"]["split"] == "transfer"
    assert ev["facets"]["transfer"]["images"] == report["images"]["transfer"]["counts"]["used"] >= 140
    for f in ev["facets"].values():
        assert set(f["table"]) == set(table)
        assert all(0 <= row[ev["metric"]] <= 1 and 0 <= row["mAP"] <= 1 for row in f["table"].values())
    # Served: the collaborative features (the CNNTrainer's regression, or the pseudo-classes) with the best
    # mean over the facets (eval.serve "best"), by hand here; the targets are checked on them.
    m, f = ev["metric"], ev["facets"]
    mean = {name: np.mean([f[facet]["table"][name][m] for facet in f]) for name in ("regression", "pseudo_class")}
    assert ev["served"] == ("pseudo_class" if mean["pseudo_class"] > mean["regression"] else "regression")
    assert ev["candidates"] == pytest.approx(mean)
    served = ev["served"]
    assert {c["target"] for c in ev["targets"]} == {
        f"style: {served} >= supervised + 0.05",
        f"style: {served} >= imagenet + 0.05",
        f"style: {served} >= random + 0.10",
        f"style: {served} >= pixels + 0.10",
        f"unseen_style: {served} >= imagenet",
        f"unseen_style: {served} >= random",
        f"unseen_style: {served} >= pixels",
        f"category: {served} >= 0.8 x imagenet",
        f"category: {served} >= random + 0.05",
        f"category: {served} >= pixels + 0.05",
        f"transfer: {served} >= random",
        f"transfer: {served} >= pixels",
    }
    assert report["index"]["served"] == served
    for c in ev["targets"]:
        assert c["met"] == (dict(c["values"])[c["target"].split()[1]] >= c["needed"] - 1e-4), c
    # Blessed on the mean of the facets' precision (eval.bless_on), by hand here.
    mean = {name: np.mean([f[facet]["table"][name][m] for facet in f]) for name in (ev["served"], "random", "pixels")}
    assert ev["margins"] == pytest.approx({b: mean[ev["served"]] - mean[b] for b in ("random", "pixels")})
    assert ev["bless_on"] == "the mean over " + ", ".join(
        f"{name} ({f[name]['images']} images)" for name in ("style", "unseen_style", "category", "transfer")
    )
    assert report["index"]["recall@10"] >= 0.95
    assert report["index"]["settings"]["why"]
    text = format_report(report)
    margins = ", ".join(f"{b} {v:+.3f}" for b, v in ev["margins"].items())
    assert f"blessing ({m} on {ev['bless_on']}): {ev['served']}'s margins over {margins}, " in text
    assert "collaborative (regression)" in text and "raw pixels" in text and "ImageNet (EfficientNet-Lite0)" in text
    assert f"targets (the paper's claims, on {ev['metric']}): {sum(c['met'] for c in ev['targets'])} of " in text


def test_console_names_each_component_as_it_starts_and_ends_in_order(run):
    """Not a terminal: one plain line as each component starts and ends, in the pipeline's order,
    with the seconds and key figures from the components' reports; no progress bars."""
    cfg, report, lines, _ = run
    assert all(line.startswith("[collabfeat] ") and "\r" not in line for line in lines)
    events = [tuple(line.split()[3:5]) for line in lines]
    order = [
        "ImageImport",
        "LogsExampleGen",
        "LogTransform",
        "Transform",
        "MFTrainer",
        "CNNTrainer",
        "Evaluator",
        "Indexer",
        "Pusher",
    ]
    for name in order:
        assert events.count((name, "running")) == 1 and events.count((name, "complete")) == 1, (name, lines)
        assert events.index((name, "running")) < events.index((name, "complete"))
    ends = [events.index((name, "complete")) for name in order[2:]]  # LogTransform onwards: a chain
    assert ends == sorted(ends)
    assert events.index(("LogTransform", "complete")) < events.index(("Transform", "running"))
    said = {line.split()[3]: line for line in lines if " complete after " in line}
    mf = report["mf"]
    assert f"recall@20 {mf['recall@20']:.3f} (popularity {mf['recall@20_popularity']:.3f})" in said["MFTrainer"]
    assert f"recall@10 {report['index']['recall@10']:.3f}" in said["Indexer"]
    assert f"version {report['push']['version']}" in said["Pusher"]
    # The steps' progress was reported to the supervisor (drawn as bars on a terminal only).
    tasks = {
        json.loads(line)["task"]
        for line in open(os.path.join(cfg.runner.output_dir, cfg.runner.pipeline_name, "progress.jsonl"))
    }
    assert {"MF ALS sweeps", "CNN regression", "baseline supervised", "embedding the catalogue"} <= tasks


def test_html_report_draws_every_chart_in_a_real_browser(run, tmp_path):
    """The run's report.html, opened from disk (no server, no network) in Debian's Chromium: it
    leads with the quality table and its targets, then the gallery of what each feature set
    retrieves (every thumbnail decoded); every chart has drawn, nothing failed; a copy is in the
    pushed version for the explorer."""
    from playwright.sync_api import sync_playwright

    cfg, report, *_ = run
    path = report["html"]
    assert open(os.path.join(report["push"]["destination"], "assets.extra", "report.html")).read() == open(path).read()
    shots = str(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors, requests = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto("file://" + path)
        charts = page.locator(".js-plotly-plot")
        titles = page.locator("section h2").all_inner_texts()
        assert {
            "Components",
            "Rows and images used, and dropped by reason",
            "Matrix factorisation",
            "CNN training",
            "Similarity against rank, for fixed catalogue items",
        } <= set(titles), titles
        assert any(t.startswith("Behaviour logs: feature statistics") for t in titles)
        assert any(t.startswith("Retrieval") for t in titles)
        assert titles[0].startswith("Quality: precision@") and titles[1] == "What each feature set retrieves"
        ev = report["evaluation"]
        cells = page.locator("table.quality tr")
        assert cells.count() == 2 + len(ev["table"])  # header, chance, one row a feature set
        assert page.locator("li.met, li.missed").count() == len(ev["targets"])
        thumbs = page.locator(".query img")
        per_query = 1 + len(ev["table"]) * 8
        assert thumbs.count() == len(ev["facets"]) * 3 * per_query
        assert page.evaluate(
            "[...document.querySelectorAll('.query img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        charts_needed = len(titles) - 3  # every section has a chart but these three
        assert charts.count() == charts_needed
        drawn = ".main-svg .trace, .main-svg .hm"  # plotly's traces; a heatmap (the sweep's) is an .hm image
        page.wait_for_function(
            f"[...document.querySelectorAll('.js-plotly-plot')].every(d => d.querySelector('{drawn}'))"
        )
        for i in range(charts.count()):  # every chart drew its traces
            assert charts.nth(i).locator(drawn).count() >= 1, i
        assert "recall@20" in page.locator("pre").inner_text()
        page.screenshot(path=os.path.join(shots, "report.png"), full_page=True)
        browser.close()
    assert errors == [] and all(u.startswith(("file://", "data:", "about:")) for u in requests), (errors, requests)


def test_pushed_version_serves_consistent_answers(run):
    cfg, report, *_ = run
    push = report["push"]
    assert push["pushed"]
    path = push["destination"]
    assert os.path.basename(path).isdigit() and os.path.dirname(path).endswith("/models/collabfeat")
    extra = os.path.join(path, "assets.extra")
    ids = [line.strip() for line in open(os.path.join(extra, "item_ids.txt")) if line.strip()]
    emb = np.load(os.path.join(extra, "embeddings.npy"))
    assert len(ids) == len(emb) == report["index"]["items"]
    assert json.load(open(os.path.join(extra, "config.json")))["cnn"]["image_size"] == 16

    model = tf.saved_model.load(path)
    assert set(model.signatures) == {"serving_default", "similar"}
    # Catalogue images as a client would send them: the original files, any size, grey PNG.
    image_dir = report["data"]["image_dir"]
    names = ids[:5]
    blobs = tf.constant([open(os.path.join(image_dir, f"{i}.png"), "rb").read() for i in names])
    got = model.signatures["serving_default"](images=blobs)["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, emb[:5], atol=1e-5)  # one preprocessing: the Indexer's and the served one
    # `similar` agrees with exact search over the pushed embeddings; k is clamped.
    res = model.signatures["similar"](images=blobs, k=tf.constant(7))
    scores = got @ emb.T
    want = np.argsort(-scores, axis=1)[:, :7]
    np.testing.assert_allclose(res["scores"].numpy(), np.take_along_axis(scores, want, 1), atol=1e-4)
    assert [i.decode() for i in res["ids"].numpy()[:, 0]] == names
    big = model.signatures["similar"](images=blobs[:1], k=tf.constant(10_000))
    assert big["ids"].shape == (1, cfg.serving.max_k)

    # The ScaNN index of the same version answers like exact search.

    idx = store.load_index(extra)
    nn, _ = idx["searcher"].search_batched(emb[:20], final_num_neighbors=1)
    assert [idx["item_ids"][n[0]] for n in nn] == ids[:20]


def test_key_figures_are_artifact_properties_in_mlmd(run):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg, report, *_ = run
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(cfg.runner.output_dir, cfg.runner.pipeline_name, "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    props = {a.uri: a.custom_properties for a in metadata_store.MetadataStore(config).get_artifacts()}

    def prop(component, output):
        return props[report["artifacts"][component][output][0]]

    def same(value):  # MLMD keeps 6 significant digits of a float property
        return pytest.approx(value, abs=1e-6)

    assert prop("MFTrainer", "model")["recall@20"].double_value == same(report["mf"]["recall@20"])
    ev, metric = report["evaluation"], report["evaluation"]["metric"]
    figures = prop("Evaluator", "evaluation")
    for facet, f in ev["facets"].items():
        for name, row in f["table"].items():
            assert f"{facet}_{name}_{metric}" in figures and f"{facet}_{name}_mAP" in figures
            assert figures[f"{facet}_{name}_{metric}"].double_value == same(row[metric])
            assert figures[f"{facet}_{name}_mAP"].double_value == same(row["mAP"])
    assert prop("Indexer", "index")["recall@10"].double_value == same(report["index"]["recall@10"])
    assert prop("LogTransform", "interactions")["rows_used"].int_value == report["logs"]["rows"]["used"]


def test_the_kubeflow_spec_executed_here_pushes_what_the_local_run_pushed(run, tmp_path):
    """The compiled KubeflowV2 spec, executed as Kubeflow's launcher runs it (each task's container
    command and arguments from the spec, in dependency order, kubeflow/local.py), with a pipeline
    root on local disk and the Beam stages on the portable engine: every task completes, the Beam
    jobs reach the job service, and the version pushed has the local run's signatures and answers
    `similar` as the local run's version does."""
    from kubeflow import local
    from kubeflow.runner import compile_pipeline
    from pipeline import engine
    from tests.test_kubeflow import components

    cfg, report, *_ = run
    job, pool = engine.spare_ports(2)  # not the defaults: another test's run may hold them
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, **report["data"]),
        eval=dataclasses.replace(cfg.eval, baselines=["pseudo_class", "random", "pixels"]),  # 3 feature tasks
        runner=dataclasses.replace(cfg.runner, engine="portable", portable_job_port=job, portable_pool_port=pool),
        serving=dataclasses.replace(cfg.serving, push_dir=str(tmp_path / "models")),
    )
    cfg = local.local_config(cfg, str(tmp_path / "root"))
    spec = compile_pipeline(cfg, str(tmp_path / "pipeline.json"))
    assert f"--job_endpoint=localhost:{job}" in open(spec).read()
    lines = []
    done = local.execute(cfg, spec, cfg.runner.kubeflow_pipeline_root, cfg.runner.container_repo_dir, lines.append)
    assert set(done) == components(cfg)
    assert sum(" complete after " in line for line in lines) == len(done), lines
    assert engine.jobs_completed(cfg.runner.kubeflow_pipeline_root) >= 5  # every Beam stage went there

    [version] = os.listdir(tmp_path / "models" / "collabfeat")
    theirs = tf.saved_model.load(str(tmp_path / "models" / "collabfeat" / version))
    ours = tf.saved_model.load(report["push"]["destination"])
    assert set(theirs.signatures) == set(ours.signatures)
    for name, sig in ours.signatures.items():
        assert theirs.signatures[name].structured_input_signature == sig.structured_input_signature
        assert theirs.signatures[name].structured_outputs.keys() == sig.structured_outputs.keys()
    ids = [line.strip() for line in open(os.path.join(report["push"]["destination"], "assets.extra", "item_ids.txt"))]
    blobs = tf.constant([open(os.path.join(report["data"]["image_dir"], f"{i}.png"), "rb").read() for i in ids[:8]])
    a = ours.signatures["similar"](images=blobs, k=tf.constant(10))
    b = theirs.signatures["similar"](images=blobs, k=tf.constant(10))
    assert (a["ids"].numpy() == b["ids"].numpy()).all()
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-5)


def test_the_code_hash_covers_the_packages_only_so_a_run_in_the_checkout_keeps_the_cache():
    """The default run directory is runs/ in the checkout, where TFX writes schema.pbtxt files. The
    code hash (a parameter of every collabfeat component) must not see them: it hashes the
    packages' folders only, and the output root is none of them."""
    from pipeline import pipeline

    repo = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tops = [os.path.join(repo, d) + os.sep for d in ("collabfeat", "pipeline", "trainer", "transform", "serving")]
    files = [path for _, path in pipeline.code_files()]
    assert all(path.startswith(tuple(tops)) for path in files), [p for p in files if not p.startswith(tuple(tops))]
    assert os.path.join(repo, "transform", "interactions_schema.pbtxt") in files
    cfg = config_lib.load()
    outputs = os.path.realpath(cfg.runner.output_dir) + os.sep
    assert not any(outputs.startswith(t) for t in tops) and os.path.realpath(cfg.serving.push_dir).startswith(outputs)


def test_a_rerun_reuses_what_is_unchanged_and_reruns_from_a_changed_setting(run):
    """TFX's cache: with nothing a component uses changed, a rerun executes nothing, pushes no new
    version and reports the same results; a changed cnn.epochs re-executes CNNTrainer, and what
    comes before it is reused. (Runs last: it adds executions to the fixture's run directory.)"""
    cfg, first, _, _ = run
    log = os.path.join(cfg.runner.output_dir, "pipeline.log")
    lines = []
    # serving.port is used by no pipeline component: changing it changes no component's parameters
    same = dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, port=cfg.serving.port + 1))
    again = supervise.run(same, "push", log, echo=lines.append)
    assert {name: c["state"] for name, c in again["components"].items()} == {
        name: "cached" for name in first["components"]
    }, lines
    assert sum(" cached (inputs, settings and code unchanged" in line for line in lines) == len(first["components"])
    for key in ("images", "logs", "mf", "cnn", "evaluation", "index", "push"):
        assert again[key] == first[key], key  # the same artifacts: no new version pushed
    lines = []
    more = dataclasses.replace(cfg, cnn=dataclasses.replace(cfg.cnn, epochs=cfg.cnn.epochs + 1))
    changed = supervise.run(more, "cnn", log, echo=lines.append)
    states = {name: c["state"] for name, c in changed["components"].items()}
    assert states.pop("CNNTrainer") == "complete", lines
    assert set(states.values()) == {"cached"} and "MFTrainer" in states, states
    assert len(changed["cnn"]["losses"]) > len(first["cnn"]["losses"])
    assert changed["mf"] == first["mf"]
    # A baselines' setting re-trains those that use it, and the evaluation; the others are reused.
    lines = []
    longer = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, baseline_epochs=cfg.eval.baseline_epochs + 1))
    changed = supervise.run(longer, "evaluate", log, echo=lines.append)
    states = {name: c["state"] for name, c in changed["components"].items()}
    assert {n for n, s in states.items() if s == "complete"} == {
        "Features_supervised",
        "Features_style_supervised",
        "Features_rotation",
        "Evaluator",
    }, lines
    assert {"Features_pseudo_class", "Features_imagenet", "Features_random", "Features_pixels", "CNNTrainer"} <= {
        n for n, s in states.items() if s == "cached"
    }
    assert len(changed["features"]["rotation"]["losses"]) == cfg.eval.baseline_epochs + 1
    assert changed["evaluation"]["table"]["pixels"] == first["evaluation"]["table"]["pixels"]
    # The push guard in the pipeline: a push must now beat the served version (the first run's, the
    # same model) by 0.5 in precision@k. Only the Pusher re-executes, and it leaves the served version.
    lines = []
    strict = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, served_margin=0.5))
    guarded = supervise.run(strict, "push", log, echo=lines.append)
    states = {name: c["state"] for name, c in guarded["components"].items()}
    assert states.pop("Pusher") == "complete" and set(states.values()) == {"cached"}, lines
    push, metric = guarded["push"], first["evaluation"]["metric"]
    assert not push["pushed"] and push["compared"]["served_version"] == first["push"]["version"]
    assert push["compared"]["candidate"][metric] == push["compared"]["served"][metric]
    # the Evaluator's blessing measure (eval.bless_on: the mean over the facets), through the served signature
    facets = {facet: f["table"] for facet, f in first["evaluation"]["facets"].items()}
    assert set(push["compared"]["facets"]) == set(facets) == {"category", "style", "unseen_style", "transfer"}
    served = overall(facets)[first["evaluation"]["served"]][metric]
    assert push["compared"]["served"][metric] == pytest.approx(served, abs=0.01)
    assert "plus eval.served_margin 0.5: that version stays served" in push["why"]
    assert any("Pusher complete" in line and "not pushed: " in line for line in lines), lines
    models = os.path.dirname(first["push"]["destination"])
    assert [n for n in os.listdir(models) if not n.startswith(".")] == [str(first["push"]["version"])]
