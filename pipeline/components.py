"""The pipeline's own TFX components: thin wrappers, each calling one function that holds the work.

Each one reads its inputs' URIs and settings, calls its function in transform/, trainer/, serving/build/
or collabfeat/ (named in its docstring), and records the result in MLMD. Each takes the settings it uses
as JSON (`settings_json`, collabfeat/config.py USES) and the code's fingerprint (`code`): with its inputs,
TFX's cache key. Each writes a `report.json` beside its outputs; pipeline/report.py (collect, format_report)
gathers those into the run report.
"""

import os

import apache_beam as beam
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx.types import artifact_utils

from collabfeat import catalogue as catalogue_lib
from collabfeat import config as config_lib
from collabfeat import examples, feature_model, progress, storage
from collabfeat.features import REGISTRY
from serving.build import index as index_lib
from serving.build import push
from trainer import evaluate, features, heldout, mf
from transform import aggregate

Examples = tfx.types.standard_artifacts.Examples
Model = tfx.types.standard_artifacts.Model
TransformGraph = tfx.types.standard_artifacts.TransformGraph
ModelEvaluation = tfx.types.standard_artifacts.ModelEvaluation
ModelBlessing = tfx.types.standard_artifacts.ModelBlessing
PushedModel = tfx.types.standard_artifacts.PushedModel
InputArtifact = tfx.dsl.components.InputArtifact
OutputArtifact = tfx.dsl.components.OutputArtifact
Parameter = tfx.dsl.components.Parameter
BeamPipeline = tfx.dsl.components.BeamComponentParameter[beam.Pipeline]


def write_report(uri: str, report: dict) -> None:
    storage.write_json(os.path.join(uri, "report.json"), report, indent=1, sort_keys=True)


def record_figures(artifact, **figures) -> None:
    """Key figures as the artifact's custom properties in MLMD, beside report.json."""
    for name, value in figures.items():
        if isinstance(value, (bool, int)):
            artifact.set_int_custom_property(name, int(value))
        elif isinstance(value, float):
            artifact.set_float_custom_property(name, value)
        else:
            artifact.set_string_custom_property(name, str(value))


@tfx.dsl.components.component(use_beam=True)
def LogTransform(
    logs: InputArtifact[Examples],
    interactions: OutputArtifact[Examples],
    settings_json: Parameter[str],
    code: Parameter[str],
    catalogue: InputArtifact[Examples] = None,
    beam_pipeline: BeamPipeline = None,
) -> None:
    """Behaviour logs -> weighted, filtered, split (user, item) pairs: transform/aggregate.py transform_logs."""
    cfg = config_lib.settings(settings_json)
    [split] = artifact_utils.decode_split_names(logs.split_names)
    counted = f"records_{split}"  # LogsExampleGen's count of what it wrote; other inputs get counted
    rows_in = (
        logs.get_int_custom_property(counted)
        if logs.has_custom_property(counted)
        else examples.count_records(artifact_utils.get_split_uri([logs], split))
    )
    report = aggregate.transform_logs(
        beam_pipeline, logs.uri, split, rows_in, interactions.uri, cfg, catalogue.uri if catalogue else None
    )
    interactions.split_names = artifact_utils.encode_split_names(["train", "eval"])
    write_report(interactions.uri, report)
    record_figures(interactions, rows_total=report["rows_total"], rows_used=report["rows"].get("used", 0))


@tfx.dsl.components.component(use_beam=True)
def ImageImport(
    images: OutputArtifact[Examples],
    settings_json: Parameter[str],
    code: Parameter[str],
    inputs: Parameter[str],
    beam_pipeline: BeamPipeline = None,
) -> None:
    """Item tables + image files -> Examples: collabfeat/catalogue.py import_images. `inputs`: the files'
    fingerprint (pipeline.inputs_fingerprint), so that changed files are read again."""
    cfg = config_lib.settings(settings_json)
    report = catalogue_lib.import_images(beam_pipeline, cfg.data, cfg.cnn.image_size, images.uri)
    images.split_names = artifact_utils.encode_split_names(list(report))
    write_report(images.uri, report)


@tfx.dsl.components.component
def MFTrainer(
    transformed: InputArtifact[Examples],
    transform_graph: InputArtifact[TransformGraph],
    model: OutputArtifact[Model],
    settings_json: Parameter[str],
    code: Parameter[str],
    catalogue: InputArtifact[Examples] = None,
) -> None:
    """Weighted pairs -> user and item latent factors: trainer/mf.py train_on_examples."""
    cfg = config_lib.settings(settings_json)
    graph = tft.TFTransformOutput(transform_graph.uri)
    users, items = ([v.decode() for v in graph.vocabulary_by_name(n)] for n in ("user_id", "item_id"))
    report = mf.train_on_examples(
        transformed.uri, users, items, cfg, os.path.join(model.uri, "factors.npz"), catalogue.uri if catalogue else None
    )
    write_report(model.uri, report)
    k = cfg.mf.recall_k
    record_figures(
        model,
        users=report["users"],
        items=report["items"],
        train_pairs=report["train_pairs"],
        **{key: float(report[key]) for key in (f"recall@{k}", f"recall@{k}_popularity")},
    )


@tfx.dsl.components.component
def CNNTrainer(
    images: InputArtifact[Examples],
    mf_model: InputArtifact[Model],
    model: OutputArtifact[Model],
    settings_json: Parameter[str],
    code: Parameter[str],
) -> None:
    """Images -> the Keras CNN trained onto the items' latent factors (cnn.mode), as a feature model in
    TFX's layout (<model>/Format-Serving/): trainer/features.py train."""
    cfg = config_lib.settings(settings_json)
    factors = os.path.join(mf_model.uri, "factors.npz")
    report = features.train(cfg.cnn.mode, images.uri, cfg, feature_model.model_dir(model.uri), factors, task="CNN")
    write_report(model.uri, {"mode": cfg.cnn.mode, **report})
    record_figures(model, kind=cfg.cnn.mode)


@tfx.dsl.components.component
def FeatureTrainer(
    images: InputArtifact[Examples],
    model: OutputArtifact[Model],
    kind: Parameter[str],
    settings_json: Parameter[str],
    code: Parameter[str],
    mf_model: InputArtifact[Model] = None,
) -> None:
    """One feature set to compare with the served one (collabfeat/features.py REGISTRY), as a feature model
    like CNNTrainer's: trainer/features.py train. A set the catalogue cannot train (supervised without
    labels) writes no model and says why."""
    cfg = config_lib.settings(settings_json)
    factors = os.path.join(mf_model.uri, "factors.npz") if mf_model is not None else None
    report = features.train(kind, images.uri, cfg, feature_model.model_dir(model.uri), factors)
    model.set_int_custom_property("trained", int(report["trained"]))
    if report["trained"]:
        record_figures(model, kind=kind)
    write_report(model.uri, report)


def feature_models(model, trained: str, **others) -> dict[str, str]:
    """Feature set name -> its feature model's path: the CNNTrainer's `model` (cnn.mode, `trained`) and the
    FeatureTrainers' Model artifacts given (None: not in this run) that hold one."""
    return {
        trained: feature_model.model_dir(model.uri),
        **{
            kind: feature_model.model_dir(m.uri)
            for kind, m in others.items()
            if m is not None and (not m.has_custom_property("trained") or m.get_int_custom_property("trained"))
        },
    }


def given_models(arguments: dict) -> dict:
    """A component's feature-model inputs (its arguments named as feature sets, collabfeat/features.py)."""
    return {name: arguments[name] for name in REGISTRY if name in arguments}


def served_features(blessing, models: dict[str, str], trained: str) -> str:
    """The feature set the Evaluator chose to serve (eval.serve), which must be one of `models`."""
    served = blessing.get_string_custom_property("served") or trained
    if served not in models:
        raise ValueError(f"the Evaluator chose {served!r} to serve, but this component was given {sorted(models)}")
    return served


# The feature sets' models, as the Evaluator's and the Indexer's optional inputs: one per kind
# (KFP's compiler takes single channels only), named as in collabfeat/features.py REGISTRY.
FeatureModel = InputArtifact[Model]


@tfx.dsl.components.component
def Evaluator(
    images: InputArtifact[Examples],
    model: InputArtifact[Model],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    settings_json: Parameter[str],
    code: Parameter[str],
    regression: FeatureModel = None,
    pseudo_class: FeatureModel = None,
    imagenet_regression: FeatureModel = None,
    supervised: FeatureModel = None,
    style_supervised: FeatureModel = None,
    imagenet: FeatureModel = None,
    rotation: FeatureModel = None,
    random: FeatureModel = None,
    pixels: FeatureModel = None,
) -> None:
    """Retrieval of every feature model on each facet, the served features chosen and blessed or not:
    trainer/evaluate.py evaluate. The blessing carries the choice ("served") to the Indexer and the Pusher."""
    cfg = config_lib.settings(settings_json)
    models = feature_models(model, cfg.cnn.mode, **given_models(locals()))
    report = evaluate.evaluate(images.uri, artifact_utils.decode_split_names(images.split_names), models, cfg)
    write_report(evaluation.uri, report)
    key = report["metric"]
    record_figures(
        evaluation,
        metric=key,
        served=report["served"],
        images=report["images"],
        targets_met=sum(c["met"] for c in report["targets"]),
        targets=len(report["targets"]),
        # facet_features_metric: feature set names hold underscores, so the facet comes first
        **{
            f"{facet}_{name}_{m}": float(v)
            for facet, f in report["facets"].items()
            for name, t in f["table"].items()
            for m, v in t.items()
            if m in (key, "mAP")
        },
    )
    blessed = report["blessed"]
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("served", report["served"])
    if not blessed:
        progress.warn(
            f"Evaluator: not blessed, so not pushed: {report['served']}'s {key} margins {report['margins']} on "
            f"{report['bless_on']} are below eval.bless_margin {cfg.eval.bless_margin}"
        )
    storage.open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w").close()
    write_report(
        blessing.uri,
        {"blessed": blessed, "margins": report["margins"], "on": report["bless_on"], "required": cfg.eval.bless_margin},
    )


class ScannIndex(tfx.dsl.Artifact):
    """The catalogue's embeddings, item ids and a serialised ScaNN searcher (serving/store.py)."""

    TYPE_NAME = "pipeline.ScannIndex"


@tfx.dsl.components.component
def Indexer(
    images: InputArtifact[Examples],
    model: InputArtifact[Model],
    blessing: InputArtifact[ModelBlessing],
    index: OutputArtifact[ScannIndex],
    settings_json: Parameter[str],
    code: Parameter[str],
    regression: FeatureModel = None,
    pseudo_class: FeatureModel = None,
    imagenet_regression: FeatureModel = None,
    supervised: FeatureModel = None,
    style_supervised: FeatureModel = None,
    imagenet: FeatureModel = None,
    rotation: FeatureModel = None,
    random: FeatureModel = None,
    pixels: FeatureModel = None,
) -> None:
    """The catalogue embedded by the served features (the Evaluator's choice), a ScaNN index of it, its
    map, and every other feature set's embeddings for the explorer: serving/build/index.py build_index."""
    cfg = config_lib.settings(settings_json)
    models = feature_models(model, cfg.cnn.mode, **given_models(locals()))
    served = served_features(blessing, models, cfg.cnn.mode)
    report = index_lib.build_index(images.uri, models, served, index.uri, cfg)
    write_report(index.uri, report)
    recall = next(key for key in report if key.startswith("recall@"))
    record_figures(index, items=report["items"], kind=report["settings"]["kind"], **{recall: float(report[recall])})
    index_lib.check_recall(report, cfg.index)


@tfx.dsl.components.component
def Pusher(
    model: InputArtifact[Model],
    index: InputArtifact[ScannIndex],
    blessing: InputArtifact[ModelBlessing],
    images: InputArtifact[Examples],
    pushed_model: OutputArtifact[PushedModel],
    settings_json: Parameter[str],
    code: Parameter[str],
    regression: FeatureModel = None,
    pseudo_class: FeatureModel = None,
    imagenet_regression: FeatureModel = None,
) -> None:
    """A blessed model (the collaborative features the Evaluator chose) -> <push_dir>/<name>/<version>/ with
    the index in assets.extra/, if on the Evaluator's held-out images it retrieves at least as well as the
    version being served (eval.served_margin): serving/build/push.py push."""
    cfg = config_lib.settings(settings_json)
    if not blessing.get_int_custom_property("blessed"):
        pushed_model.set_int_custom_property("pushed", 0)
        write_report(pushed_model.uri, {"pushed": False, "why": "the model was not blessed"})
        return
    models = feature_models(model, cfg.cnn.mode, **given_models(locals()))
    served = served_features(blessing, models, cfg.cnn.mode)
    split_names = artifact_utils.decode_split_names(images.split_names)
    result = push.push(models[served], index.uri, cfg, heldout=push.heldout_images(images.uri, split_names))
    compared = result["compared"] or {}
    pushed_model.set_int_custom_property("pushed", int(result["pushed"]))
    if result["pushed"]:
        pushed_model.set_string_custom_property("pushed_destination", result["destination"])
        pushed_model.set_int_custom_property("pushed_version", result["version"])
    else:
        progress.warn(f"Pusher: not pushed: {result['why']}")
    if "metric" in compared:
        record_figures(
            pushed_model,
            served_version=compared["served_version"],
            **{f"{who}_{compared['metric']}": compared[who][compared["metric"]] for who in ("candidate", "served")},
        )
    write_report(pushed_model.uri, {**result, "split": heldout.evaluation_split(split_names), "served": served})
