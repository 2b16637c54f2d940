"""The same pipeline compiles for Kubeflow Pipelines (KubeflowV2DagRunner)."""
import json
import os

import yaml

from collabfeat import config as config_lib
from collabfeat.kubeflow.runner import DEFAULT_DATA, compile_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
COMPONENTS = {"LogsExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "ImageImport", "LogTransform",
              "InteractionsSchema", "Transform", "MFTrainer", "CNNTrainer", "Evaluator", "Indexer", "Pusher"}


def test_compiles_with_image_components_and_beam_args(tmp_path):
    cfg = config_lib.load(os.path.join(HERE, "..", "kubeflow", "cluster.example.yaml"))
    out = compile_pipeline(cfg, str(tmp_path / "pipeline.json"))
    spec = json.load(open(out))
    pipeline_spec = spec.get("pipelineSpec", spec)
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    assert set(tasks) == COMPONENTS
    executors = pipeline_spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {cfg.runner.container_image}
    text = json.dumps(spec)
    assert "--runner=DataflowRunner" in text and "--temp_location=gs://YOUR-BUCKET/collabfeat/tmp" in text
    assert "/app/transform/interactions_schema.pbtxt" in text      # read inside the image
    assert "gs://YOUR-BUCKET/collabfeat/data/items.csv" in text
    root = spec.get("runtimeConfig", {}).get("gcsOutputDirectory") or text
    assert "gs://YOUR-BUCKET/collabfeat/root" in root
    # The Transform and MF stages are wired in order.
    assert "Transform" in tasks["MFTrainer"].get("dependentTasks", [])
    assert {"Evaluator", "Indexer"} <= set(tasks["Pusher"].get("dependentTasks", []))


def test_default_data_comes_from_the_image(tmp_path):
    cfg = config_lib.load()
    text = open(compile_pipeline(cfg, str(tmp_path / "p.json"))).read()
    assert f"{DEFAULT_DATA}/items.csv" in text and "--direct_running_mode=multi_processing" in text


def test_manifests_parse_and_serve_the_pushed_layout():
    docs = list(yaml.safe_load_all(open(os.path.join(HERE, "..", "kubeflow", "serving.yaml"))))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 2 and kinds.count("Service") == 2
    images = [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in docs if d["kind"] == "Deployment"]
    assert any(i.startswith("tensorflow/serving:") for i in images)
    text = open(os.path.join(HERE, "..", "kubeflow", "serving.yaml")).read()
    assert "--model_base_path=/models/collabfeat" in text
