"""The collabfeat TFX pipeline: one definition for the local DirectRunner and Kubeflow."""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Iterator, Sequence

from google.protobuf import any_pb2, wrappers_pb2
from tfx import v1 as tfx
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.orchestration.pipeline import RunOptions
from tfx.proto import example_gen_pb2

from collabfeat.config import Config, compared_features, feature_node, settings_for
from collabfeat.features import COLLABORATIVE
from pipeline import components as c
from pipeline import examplegen

HERE = os.path.dirname(os.path.abspath(__file__))
INTERACTIONS_SCHEMA = os.path.normpath(os.path.join(HERE, "..", "transform", "interactions_schema.pbtxt"))
PREPROCESSING_FN = "transform.preprocessing.preprocessing_fn"
# The pipeline's stages, in order, and the nodes each ends with; a run `until` one of them is a TFX
# partial run to the nodes of that stage and of the stages before it.
UNTIL = {
    "validate": ("ExampleValidator", "ImageImport"),
    "transform": ("Transform",),
    "mf": ("MFTrainer",),
    "cnn": ("CNNTrainer",),
    "evaluate": ("Evaluator",),
    "push": None,
}
STAGES = tuple(UNTIL)


def run_options(until: str = "push", with_catalogue: bool = True):
    """TFX's partial run that stops after stage `until` (None: the whole pipeline). Only the
    nodes upstream of the stage's (and earlier stages') last nodes run; the others are skipped."""
    if until not in UNTIL:
        raise ValueError(f"until must be one of {STAGES}, not {until!r}")
    if not with_catalogue and until in ("cnn", "evaluate", "push"):
        raise ValueError(
            f"stage {until!r} needs the image catalogue: without it (runner.catalogue false) only the behaviour "
            "path runs, until validate, transform or mf"
        )
    if UNTIL[until] is None:
        return None

    nodes = [n for stage in STAGES[: STAGES.index(until) + 1] for n in UNTIL[stage]]
    return RunOptions(to_nodes=[n for n in nodes if with_catalogue or n != "ImageImport"])


def _single_split(pattern: str) -> tuple:
    return (
        example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern=pattern)]),
        example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(name="all", hash_buckets=1)]
            )
        ),
    )


CODE_PACKAGES = ("collabfeat", "transform", "trainer", "serving", "pipeline")


def code_files() -> list[tuple[str, str]]:
    """(name, path) of the code the components run: the Python files and the interactions schema in each
    package's folder (CODE_PACKAGES), named package/relative path. Never the repository's top folder,
    whose walk would take in the run directory (`runs/`, where TFX writes schema.pbtxt files) and the
    tests, so a run would change the code's hash for the next one."""
    out, seen = [], set()
    for package in CODE_PACKAGES:
        top = os.path.dirname(os.path.abspath(importlib.import_module(package).__file__))
        for d, dirs, files in os.walk(top):
            dirs[:] = sorted(x for x in dirs if x not in ("__pycache__", "static"))
            for f in sorted(files):
                path = os.path.realpath(os.path.join(d, f))
                if f.endswith((".py", ".pbtxt")) and path not in seen:
                    seen.add(path)
                    out.append((f"{package}/{os.path.relpath(path, top)}", path))
    return out


def code_fingerprint() -> str:
    """A hash of collabfeat's code (code_files). Every component that runs collabfeat's code has
    it as a parameter, so that changed code is never answered from TFX's cache (which keys on
    parameters and inputs, not on the code behind them)."""
    h = hashlib.sha256()
    for name, path in code_files():
        h.update(f"{name}\0".encode())
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def _files(path: str) -> Iterator[tuple[str, int, int]]:
    """(name, size, modification time in ns) of a file, or of every file under a directory; local or a URI."""
    if "://" not in path:
        if os.path.isfile(path):
            st = os.stat(path)
            yield path, st.st_size, st.st_mtime_ns
        for d, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(d, f))
                yield os.path.join(d, f), st.st_size, st.st_mtime_ns
        return

    if not fileio.exists(path):
        return
    if not fileio.isdir(path):
        st = fileio.stat(path)
        yield path, st.length, st.mtime_nsec
        return
    for d, _, files in fileio.walk(path):
        for f in sorted(files):
            st = fileio.stat(os.path.join(d, f))
            yield os.path.join(d, f), st.length, st.mtime_nsec


def inputs_fingerprint(*paths: str) -> str:
    """A hash of the names, sizes and modification times of the files at `paths`: ImageImport's
    parameter, so that a changed item table or image file is read again rather than answered from
    the cache (TFX's ExampleGen does the same for the logs)."""
    h = hashlib.sha256()
    for path in paths:
        for name, size, mtime in _files(path) if path else ():
            h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:16]


def logs_example_gen(path: str, fmt: str = "", code: str = ""):
    """An ExampleGen for a log file, or a directory of them (format: data.logs_format, or the
    file's extension: .csv, .parquet, .tfrecord/.gz). Paths may be URIs (gs://...)."""
    name = os.path.basename(path.rstrip("/"))
    is_file = "." in name
    base, pattern = (os.path.dirname(path), name) if is_file else (path, "*")
    kind = (fmt or (name.rsplit(".", 1)[-1] if is_file else "csv")).lower()
    input_config, output_config = _single_split(pattern)
    executors = {
        "csv": examplegen.CsvExecutor,
        "parquet": examplegen.ParquetExecutor,
        "tfrecord": examplegen.ImportExecutor,
        "tfrecords": examplegen.ImportExecutor,
        "gz": examplegen.ImportExecutor,
    }
    if kind not in executors:
        raise ValueError(f"data.logs: cannot read {kind!r} logs ({path}); use CSV, Parquet or TFRecord")
    code_config = any_pb2.Any()
    code_config.Pack(wrappers_pb2.StringValue(value=code))  # the executor's code: part of the cache key
    return FileBasedExampleGen(
        input_base=base,
        input_config=input_config,
        output_config=output_config,
        custom_config=example_gen_pb2.CustomConfig(custom_config=code_config),
        custom_executor_spec=executor_spec.BeamExecutorSpec(executors[kind]),
    )


_DEPENDENCY_FLAGS = (
    "--extra_package",
    "--setup_file",
    "--requirements_file",
    "--sdk_container_image",
    "--worker_harness_container_image",
)


def beam_args(cfg: Config, engine_args: Sequence[str] = ()) -> list[str]:
    """engine_args: the portable engine's (pipeline/engine.py), given while its services run."""
    r = cfg.runner
    args = list(r.beam_args) + list(engine_args)
    local = r.engine == "portable" or not any(a.startswith("--runner") for a in args)
    if r.engine == "direct" and local:
        args += [f"--direct_running_mode={r.direct_running_mode}", f"--direct_num_workers={r.direct_num_workers}"]
    if local and not any(a.startswith(_DEPENDENCY_FLAGS) for a in args):
        # Without one of these flags TFX builds a 50 MB sdist of itself for every Beam component
        # (about 3 s) into a new /tmp directory that nothing removes, for workers to install.
        # Local workers (the DirectRunner's, and the portable engine's EXTERNAL pool) share this
        # environment and only a Docker environment reads this flag, so it stops the build and
        # ships nothing.
        args.append("--sdk_container_image=unused-by-local-workers")
    return args


def create_pipeline(
    cfg: Config,
    logs: str,
    pipeline_root: str,
    metadata_path: str | None,
    with_catalogue: bool = True,
    schema_file: str = INTERACTIONS_SCHEMA,
    fingerprint_inputs: bool = True,
    engine_args: Sequence[str] = (),
) -> tfx.dsl.Pipeline:
    """fingerprint_inputs: hash the item tables and images now (local runs); a pipeline compiled
    for elsewhere (Kubeflow) cannot see them, and its ImageImport is keyed on their paths only.
    engine_args: Beam arguments of the running portable engine (pipeline/engine.py)."""

    code = code_fingerprint()

    def params(component: str) -> dict:
        return {"settings_json": settings_for(cfg, component), "code": code}

    logs_gen = logs_example_gen(logs, cfg.data.logs_format, code).with_id("LogsExampleGen")
    stats = tfx.components.StatisticsGen(examples=logs_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"], infer_feature_shape=True)
    validator = tfx.components.ExampleValidator(statistics=stats.outputs["statistics"], schema=schema.outputs["schema"])
    parts = [logs_gen, stats, schema, validator]

    catalogue = None
    if with_catalogue:
        d = cfg.data
        inputs = (
            inputs_fingerprint(d.items, d.eval_items, d.transfer_items, d.unseen_items, d.image_dir)
            if fingerprint_inputs
            else ""
        )
        catalogue = c.ImageImport(inputs=inputs, **params("ImageImport")).with_id("ImageImport")
        parts.append(catalogue)

    log_transform = c.LogTransform(
        logs=logs_gen.outputs["examples"],
        **params("LogTransform"),
        catalogue=catalogue.outputs["images"] if catalogue else None,
    )
    pair_schema = tfx.components.ImportSchemaGen(schema_file=schema_file).with_id("InteractionsSchema")
    transform = tfx.components.Transform(
        examples=log_transform.outputs["interactions"],
        schema=pair_schema.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"code": code},
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
        # TFX's post-transform statistics flatten the transformed train and eval splits into one
        # PCollection, which Beam's DirectRunner holds whole in memory (6.0 GB at 10.5M pairs);
        # nothing reads those statistics, and StatisticsGen describes the logs.
        disable_statistics=True,
    )
    images = catalogue.outputs["images"] if catalogue else None
    mf = c.MFTrainer(
        transformed=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        catalogue=images,
        **params("MFTrainer"),
    )
    parts += [log_transform, pair_schema, transform, mf]

    if images is not None:  # the CNN stages need the image catalogue
        cnn = c.CNNTrainer(images=images, mf_model=mf.outputs["model"], **params("CNNTrainer"))
        parts.append(cnn)
        # Each feature set compared with the served one is a node of its own, with its own Model.
        features = {}
        for kind in compared_features(cfg):
            node = feature_node(kind)
            factors = mf.outputs["model"] if kind in COLLABORATIVE else None
            trainer = c.FeatureTrainer(images=images, mf_model=factors, kind=kind, **params(node)).with_id(node)
            features[kind] = trainer.outputs["model"]
            parts.append(trainer)
        evaluator = c.Evaluator(images=images, model=cnn.outputs["model"], **features, **params("Evaluator"))
        # The Evaluator chooses the collaborative features to serve (eval.serve); the Indexer and the
        # Pusher read its choice on the blessing and serve those.
        indexer = c.Indexer(
            images=images,
            model=cnn.outputs["model"],
            blessing=evaluator.outputs["blessing"],
            **features,
            **params("Indexer"),
        )
        pusher = c.Pusher(
            model=cnn.outputs["model"],
            index=indexer.outputs["index"],
            blessing=evaluator.outputs["blessing"],
            images=images,
            **{kind: m for kind, m in features.items() if kind in COLLABORATIVE},
            **params("Pusher"),
        )
        parts += [evaluator, indexer, pusher]

    return tfx.dsl.Pipeline(
        pipeline_name=cfg.runner.pipeline_name,
        pipeline_root=pipeline_root,
        components=parts,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path) if metadata_path else None
        ),
        beam_pipeline_args=beam_args(cfg, engine_args),
        # A component whose inputs, settings and code are unchanged reuses its earlier outputs
        # (runner.cache; `--no-cache` forces a full run): a rerun after a failure resumes there.
        enable_cache=cfg.runner.cache,
    )
