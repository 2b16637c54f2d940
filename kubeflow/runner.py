"""Compiling the same pipeline for Kubeflow Pipelines with TFX's KubeflowV2DagRunner.

    collabfeat kubeflow --output pipeline.json [--set runner.kubeflow_pipeline_root=gs://b/collabfeat]

Every component runs in the pipeline image (kubeflow/Dockerfile), which holds the repository at
runner.container_repo_dir and the embedded default data at DEFAULT_DATA, so the default run needs
no data upload. For your own data, set data.* to URIs the cluster reads (gs://...).
Beam stages run with runner.beam_args (a distributed runner: see README, "Running at scale").
"""

from __future__ import annotations

import dataclasses
import os

from tfx import v1 as tfx

from collabfeat.config import Config
from pipeline import engine
from pipeline.pipeline import create_pipeline

# Generated into the image at build time by `collabfeat simulate` (kubeflow/Dockerfile).
DEFAULT_DATA = "/data/default"


def cluster_config(cfg: Config) -> Config:
    d = cfg.data
    if not d.logs:
        d = dataclasses.replace(
            d,
            logs=f"{DEFAULT_DATA}/logs",
            items=f"{DEFAULT_DATA}/items.csv",
            image_dir=f"{DEFAULT_DATA}/images",
            eval_items=f"{DEFAULT_DATA}/eval_items.csv",
            transfer_items=f"{DEFAULT_DATA}/transfer_items.csv",
            unseen_items=f"{DEFAULT_DATA}/unseen_items.csv",
        )
    elif not d.items:
        raise ValueError("data.items is required with data.logs")
    return dataclasses.replace(cfg, data=d)


def compile_pipeline(cfg: Config, output: str) -> str:

    cfg = cluster_config(cfg)
    schema = os.path.join(cfg.runner.container_repo_dir, "transform", "interactions_schema.pbtxt")
    # runner.engine=portable: the Beam stages go to a Beam job service at runner.portable_job_port
    # (kubeflow/local.py starts one; on a cluster, a Flink or Spark job server in its place).
    engine_args = (
        engine.args(cfg, cfg.runner.portable_job_port, cfg.runner.portable_pool_port)
        if cfg.runner.engine == "portable"
        else ()
    )
    pipeline = create_pipeline(
        cfg,
        cfg.data.logs,
        cfg.runner.kubeflow_pipeline_root,
        metadata_path=None,
        schema_file=schema,
        fingerprint_inputs=False,
        engine_args=engine_args,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=cfg.runner.container_image),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output),
    )
    runner.run(pipeline)
    return os.path.abspath(output)
