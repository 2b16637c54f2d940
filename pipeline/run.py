"""Running the pipeline in this process (LocalDagRunner, Beam's DirectRunner or the portable
engine): the child side of pipeline/supervise.py."""

from __future__ import annotations

import json
import os
import time

from tfx import v1 as tfx

from collabfeat.config import Config
from pipeline import engine
from pipeline.data import paths, prepare_data
from pipeline.pipeline import create_pipeline, run_options
from pipeline.report import collect, executions


def run_local(cfg: Config, until: str = "push") -> dict:
    """Runs the pipeline in this process (LocalDagRunner); -> the report of this run's components."""
    cfg = prepare_data(cfg)
    root, metadata_path, report_path = paths(cfg)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "config.json"), "w") as f:
        f.write(cfg.to_json())
    start = time.time()
    jobs_before = engine.jobs_completed(root)
    with engine.started(cfg, root) as engine_args:
        tfx.orchestration.LocalDagRunner().run(
            create_pipeline(
                cfg,
                cfg.data.logs,
                os.path.join(root, "root"),
                metadata_path,
                with_catalogue=cfg.runner.catalogue,
                engine_args=engine_args,
            ),
            run_options=run_options(until, with_catalogue=cfg.runner.catalogue),
        )
    report = collect(cfg, executions(metadata_path, int(start * 1000) - 1))
    report["engine"] = {"name": cfg.runner.engine}
    if cfg.runner.engine == "portable":
        report["engine"]["jobs"] = engine.jobs_completed(root) - jobs_before
        report["engine"]["log"] = os.path.join(root, "beam-job-service.log")
    report["seconds"] = round(time.time() - start, 1)
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    return report
