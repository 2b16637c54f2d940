"""The collabfeat TFX pipeline: one definition for the local DirectRunner and Kubeflow."""
from __future__ import annotations

import os
from typing import List, Optional

from tfx import v1 as tfx
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from collabfeat.config import Config
from collabfeat.pipeline import examplegen

HERE = os.path.dirname(os.path.abspath(__file__))
INTERACTIONS_SCHEMA = os.path.normpath(os.path.join(HERE, "..", "transform", "interactions_schema.pbtxt"))
PREPROCESSING_FN = "collabfeat.transform.preprocessing.preprocessing_fn"
# The order of the pipeline's stages; `until` stops after one of them.
STAGES = ("validate", "transform", "mf", "cnn", "evaluate", "push")


def _single_split(pattern: str) -> tuple:
    return (example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern=pattern)]),
            example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name="all", hash_buckets=1)])))


def logs_example_gen(path: str, fmt: str = ""):
    """An ExampleGen for a log file, or a directory of them (format: data.logs_format, or the
    file's extension: .csv, .parquet, .tfrecord/.gz). Paths may be URIs (gs://...)."""
    name = os.path.basename(path.rstrip("/"))
    is_file = "." in name
    base, pattern = (os.path.dirname(path), name) if is_file else (path, "*")
    kind = (fmt or (name.rsplit(".", 1)[-1] if is_file else "csv")).lower()
    input_config, output_config = _single_split(pattern)
    executors = {"csv": examplegen.CsvExecutor, "parquet": examplegen.ParquetExecutor,
                 "tfrecord": examplegen.ImportExecutor, "tfrecords": examplegen.ImportExecutor,
                 "gz": examplegen.ImportExecutor}
    if kind not in executors:
        raise ValueError(f"data.logs: cannot read {kind!r} logs ({path}); use CSV, Parquet or TFRecord")
    return FileBasedExampleGen(
        input_base=base, input_config=input_config, output_config=output_config,
        custom_executor_spec=executor_spec.BeamExecutorSpec(executors[kind]))


_DEPENDENCY_FLAGS = ("--extra_package", "--setup_file", "--requirements_file", "--sdk_container_image",
                     "--worker_harness_container_image")


def beam_args(cfg: Config) -> List[str]:
    r = cfg.runner
    args = list(r.beam_args)
    if not any(a.startswith("--runner") for a in args):
        args += [f"--direct_running_mode={r.direct_running_mode}",
                 f"--direct_num_workers={r.direct_num_workers}"]
        if not any(a.startswith(_DEPENDENCY_FLAGS) for a in args):
            # Without one of these flags TFX builds a 50 MB sdist of itself for every Beam component
            # (about 3 s) into a new /tmp directory that nothing removes, for workers to install.
            # The DirectRunner's workers share this environment and only a Docker environment reads
            # this flag, so it stops the build and ships nothing.
            args.append("--sdk_container_image=unused-by-the-local-direct-runner")
    return args


def create_pipeline(cfg: Config, logs: str, pipeline_root: str, metadata_path: Optional[str],
                    until: str = "push", with_catalogue: bool = True,
                    schema_file: str = INTERACTIONS_SCHEMA) -> tfx.dsl.Pipeline:
    from collabfeat.pipeline import components as c

    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, not {until!r}")
    stop = STAGES.index(until)
    config_json = cfg.to_json()

    logs_gen = logs_example_gen(logs, cfg.data.logs_format).with_id("LogsExampleGen")
    stats = tfx.components.StatisticsGen(examples=logs_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"], infer_feature_shape=True)
    validator = tfx.components.ExampleValidator(
        statistics=stats.outputs["statistics"], schema=schema.outputs["schema"])
    parts = [logs_gen, stats, schema, validator]

    catalogue = None
    if with_catalogue:
        catalogue = c.ImageImport(config_json=config_json).with_id("ImageImport")
        parts.append(catalogue)

    if stop >= STAGES.index("transform"):
        log_transform = c.LogTransform(
            logs=logs_gen.outputs["examples"], config_json=config_json,
            catalogue=catalogue.outputs["images"] if catalogue else None)
        pair_schema = tfx.components.ImportSchemaGen(
            schema_file=schema_file).with_id("InteractionsSchema")
        transform = tfx.components.Transform(
            examples=log_transform.outputs["interactions"], schema=pair_schema.outputs["schema"],
            preprocessing_fn=PREPROCESSING_FN,
            splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]))
        parts += [log_transform, pair_schema, transform]

    images = catalogue.outputs["images"] if catalogue else None
    if stop >= STAGES.index("mf"):
        mf = c.MFTrainer(transformed=transform.outputs["transformed_examples"],
                         transform_graph=transform.outputs["transform_graph"],
                         catalogue=images, config_json=config_json)
        parts.append(mf)
    if stop >= STAGES.index("cnn"):
        if images is None:
            raise ValueError("the CNN stages need the image catalogue (with_catalogue=True)")
        cnn = c.CNNTrainer(images=images, mf_model=mf.outputs["model"], config_json=config_json)
        parts.append(cnn)
    if stop >= STAGES.index("evaluate"):
        evaluator = c.Evaluator(images=images, mf_model=mf.outputs["model"], model=cnn.outputs["model"],
                                config_json=config_json)
        parts.append(evaluator)
    if stop >= STAGES.index("push"):
        indexer = c.Indexer(images=images, model=cnn.outputs["model"], evaluation=evaluator.outputs["evaluation"],
                            config_json=config_json)
        pusher = c.Pusher(model=cnn.outputs["model"], index=indexer.outputs["index"],
                          blessing=evaluator.outputs["blessing"], config_json=config_json)
        parts += [indexer, pusher]

    return tfx.dsl.Pipeline(
        pipeline_name=cfg.runner.pipeline_name,
        pipeline_root=pipeline_root,
        components=parts,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
            if metadata_path else None),
        beam_pipeline_args=beam_args(cfg),
        enable_cache=False,
    )
