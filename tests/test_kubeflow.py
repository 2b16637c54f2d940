"""The same pipeline compiles for Kubeflow Pipelines (KubeflowV2DagRunner)."""

import json
import os

import yaml

from collabfeat import config as config_lib
from kubeflow.runner import DEFAULT_DATA, compile_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
COMPONENTS = {
    "LogsExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "ImageImport",
    "LogTransform",
    "InteractionsSchema",
    "Transform",
    "MFTrainer",
    "CNNTrainer",
    "Evaluator",
    "Indexer",
    "Pusher",
}


def components(cfg):
    """The pipeline's nodes: COMPONENTS and a trainer for each feature set compared with the served one."""
    return COMPONENTS | {config_lib.feature_node(kind) for kind in config_lib.compared_features(cfg)}


def test_compiles_with_image_components_and_beam_args(tmp_path):
    cfg = config_lib.load(os.path.join(HERE, "..", "kubeflow", "cluster.example.yaml"))
    out = compile_pipeline(cfg, str(tmp_path / "pipeline.json"))
    spec = json.load(open(out))
    pipeline_spec = spec.get("pipelineSpec", spec)
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    assert set(tasks) == components(cfg)
    assert set(config_lib.compared_features(cfg)) == {
        "supervised",
        "style_supervised",
        "imagenet",
        "imagenet_regression",
        "random",
        "pixels",
    }
    executors = pipeline_spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {cfg.runner.container_image}
    text = json.dumps(spec)
    assert "--runner=DataflowRunner" in text and "--temp_location=gs://YOUR-BUCKET/collabfeat/tmp" in text
    assert "/app/transform/interactions_schema.pbtxt" in text  # read inside the image
    assert "gs://YOUR-BUCKET/collabfeat/data/items.csv" in text
    root = spec.get("runtimeConfig", {}).get("gcsOutputDirectory") or text
    assert "gs://YOUR-BUCKET/collabfeat/root" in root
    # The Transform and MF stages are wired in order.
    assert "Transform" in tasks["MFTrainer"].get("dependentTasks", [])
    assert {"Evaluator", "Indexer"} <= set(tasks["Pusher"].get("dependentTasks", []))
    # Each feature set is a task of its own: the baselines train in parallel, on images alone
    # unless they learn from the item factors; the Evaluator and the Indexer take them all.
    features = {config_lib.feature_node(k) for k in config_lib.compared_features(cfg)}
    assert features <= set(tasks["Evaluator"]["dependentTasks"]) and features <= set(tasks["Indexer"]["dependentTasks"])
    assert "MFTrainer" in tasks["Features_imagenet_regression"]["dependentTasks"]
    assert tasks["Features_supervised"]["dependentTasks"] == ["ImageImport"]


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


# A task's container, as kubeflow/local.py runs it: reads its ExecutorInput ({{$}}), writes each
# output artifact (its parameter "word" and what its inputs held) and an ExecutorOutput with metadata.
TASK = r"""
import json, os, sys
ex = json.loads(sys.argv[1])
word = ex["inputs"]["parameters"]["word"]["stringValue"]
if word == "fail":
    sys.exit("asked to fail")
seen = [open(os.path.join(a["uri"], "data")).read() + "@" + json.dumps(a["metadata"], sort_keys=True)
        for key in sorted(ex["inputs"].get("artifacts", {})) for a in ex["inputs"]["artifacts"][key]["artifacts"]]
out = {}
for key, arts in ex["outputs"]["artifacts"].items():
    a = arts["artifacts"][0]
    open(os.path.join(a["uri"], "data"), "w").write("+".join(seen + [word]))
    out[key] = {"artifacts": [{"uri": a["uri"], "metadata": {"words": len(seen) + 1, **a["metadata"]}}]}
json.dump({"artifacts": out}, open(ex["outputs"]["outputFile"], "w"))
"""
DRIVER = r"""
import json, sys
ex = json.loads(sys.argv[1])
key = next(iter(ex["outputs"]["artifacts"]))
json.dump({"artifacts": {key: {"artifacts": [{"metadata": {"span": 7}}]}}}, open(ex["outputs"]["outputFile"], "w"))
"""


def _spec(tmp_path, words):
    import sys

    kind = {"artifactType": {"instanceSchema": "title: tfx.Examples\ntype: object\n"}}
    tasks, components, executors = {}, {}, {}
    for name, (word, reads) in words.items():
        tasks[name] = {
            "componentRef": {"name": name},
            "dependentTasks": reads,
            "inputs": {
                "parameters": {"word": {"runtimeValue": {"constantValue": {"stringValue": word}}}},
                "artifacts": {
                    f"in_{r}": {"taskOutputArtifact": {"producerTask": r, "outputArtifactKey": "out"}} for r in reads
                },
            },
        }
        components[name] = {"executorLabel": f"{name}_executor", "outputDefinitions": {"artifacts": {"out": kind}}}
        container = {"image": "unused", "command": [sys.executable, "-c", TASK], "args": ["{{$}}"]}
        if name == "a":
            container["lifecycle"] = {"preCacheCheck": {"command": [sys.executable, "-c", DRIVER], "args": ["{{$}}"]}}
        executors[f"{name}_executor"] = {"container": container}
    path = tmp_path / "spec.json"
    path.write_text(
        json.dumps(
            {
                "pipelineSpec": {
                    "root": {"dag": {"tasks": tasks}},
                    "components": components,
                    "deploymentSpec": {"executors": executors},
                }
            }
        )
    )
    return str(path)


def test_a_spec_runs_in_dependency_order_and_passes_artifacts_with_their_metadata(tmp_path):
    import pytest

    from kubeflow import local

    spec = _spec(tmp_path, {"c": ("gamma", ["a", "b"]), "b": ("beta", ["a"]), "a": ("alpha", [])})
    lines = []
    done = local.execute_spec(spec, str(tmp_path / "root"), str(tmp_path), lines.append)
    assert [line.split()[1] for line in lines if line.endswith("running")] == ["a", "b", "c"]
    [c] = done["c"]["out"]["artifacts"]
    a_meta = '{"span": 7, "words": 1}'  # the driver's metadata, then the executor's
    b = f'alpha@{a_meta}+beta@{{"words": 2}}'
    assert open(os.path.join(c["uri"], "data")).read() == f"alpha@{a_meta}+{b}+gamma"
    assert c["metadata"] == {"words": 3}

    spec = _spec(tmp_path, {"a": ("alpha", []), "b": ("fail", ["a"])})
    with pytest.raises(local.TaskFailed, match=r"^b exited with status 1; log: .*/b/log.txt\n(.|\n)*asked to fail"):
        local.execute_spec(spec, str(tmp_path / "root2"), str(tmp_path), lines.append)
    spec = _spec(tmp_path, {"a": ("alpha", ["b"]), "b": ("beta", ["a"])})
    with pytest.raises(ValueError, match="cycle"):
        local.execute_spec(spec, str(tmp_path / "root3"), str(tmp_path), lines.append)
