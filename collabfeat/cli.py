"""The `collabfeat` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from collabfeat import config as config_lib
from collabfeat import quiet


def _verbose_arg(p):
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's and absl's start-up messages (oneDNN, CUDA, absl) on the console",
    )


def _config_args(p):
    _verbose_arg(p)
    p.add_argument("--config", help="a YAML file of settings (see collabfeat/config.py)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set cnn.epochs=3 (repeatable)",
    )


def _run_args(p):
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="run every component, even those whose inputs, settings and code are unchanged (runner.cache=false)",
    )
    p.add_argument(
        "--engine",
        choices=("direct", "portable"),
        help="where the Beam stages run: Beam's DirectRunner, or Beam's portability framework (a "
        "local job service and SDK worker processes, the path of Flink, Spark and Dataflow); "
        "runner.engine",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="collabfeat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default data and print the report")
    p.set_defaults(func=run_pipeline)
    _config_args(p)
    _run_args(p)
    p = sub.add_parser("run", help="run the pipeline on your own data")
    p.set_defaults(func=run_pipeline)
    _config_args(p)
    _run_args(p)
    p.add_argument("--logs", help="behaviour log file or directory (CSV, Parquet or TFRecord)")
    p.add_argument("--items", help="item table CSV: item_id,image[,label]")
    p.add_argument("--image-dir", help="directory that relative image paths are resolved against")
    p.add_argument("--eval-items", help="held-out labelled item table CSV for the evaluation")
    p.add_argument("--transfer-items", help="labelled item table CSV from another source: the transfer facet")
    p.add_argument(
        "--unseen-items",
        help="held-out item table CSV (with style) in a style the catalogue lacks: the unseen-style facet",
    )
    p.add_argument("--until", default="push", help="stop after this stage")
    p = sub.add_parser("simulate", help="write the simulated default data set to a directory")
    p.set_defaults(func=simulate)
    _config_args(p)
    p.add_argument("out")
    p = sub.add_parser("config", help="print the effective configuration as JSON")
    p.set_defaults(func=show_config)
    _config_args(p)
    p = sub.add_parser("serve", help="serve pushed versions over TF Serving's gRPC API")
    p.set_defaults(func=serve)
    _config_args(p)
    p.add_argument("--model-name", help="default: serving.model_name")
    p.add_argument("--model-base-path", help="default: <serving.push_dir>/<model name>")
    p.add_argument("--models-config", help="a TF Serving models.config (text ModelServerConfig) instead")
    p.add_argument("--port", type=int, help="default: serving.port (0 picks a free one)")
    p = sub.add_parser("explore", help="the explorer web page over a pushed version")
    p.set_defaults(func=explore)
    _config_args(p)
    p.add_argument("--model-base-path", help="default: <serving.push_dir>/<serving.model_name>")
    p.add_argument("--version", type=int, help="default: the newest")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8600, help="0 picks a free one")
    p = sub.add_parser("kubeflow", help="compile the pipeline for Kubeflow Pipelines (KubeflowV2DagRunner)")
    p.set_defaults(func=kubeflow)
    _config_args(p)
    p.add_argument("--output", default="collabfeat-pipeline.json")
    p.add_argument(
        "--execute-locally",
        metavar="ROOT",
        help="then execute the compiled spec here, each task's container command as Kubeflow runs it, "
        "this checkout standing in for the image, with pipeline root ROOT (kubeflow/local.py)",
    )
    p = sub.add_parser("query", help="ask a server for similar items (TF Serving gRPC API)")
    p.set_defaults(func=query)
    _verbose_arg(p)
    p.add_argument("images", nargs="*", help="image files to query with")
    p.add_argument("--id", action="append", default=[], help="a catalogue item id to query with (similar_by_id)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--server", default="127.0.0.1:8500")
    p.add_argument("--model", default="collabfeat")
    p.add_argument("--version", type=int)
    p.add_argument("--embedding", action="store_true", help="print embeddings (serving_default) instead")
    p.add_argument("--tls-ca", default="", help="PEM bundle to trust, for a TLS server")

    args = parser.parse_args(argv)
    if not args.verbose:
        quiet.start()  # TensorFlow's and absl's start-up lines off the console (--verbose: on)
    try:
        if args.func is query:
            return query(args, parser)
        try:
            cfg = config_lib.load(args.config, args.set)
        except (ValueError, OSError) as e:
            parser.exit(2, f"collabfeat: {e}\n")
        return args.func(args, cfg, parser)
    finally:
        quiet.stop()


# Each command imports what it needs when it runs: the CLI starts without TensorFlow, TFX or gRPC
# (seconds and hundreds of MB), and `config` or `query` never load them.


def show_config(args, cfg, parser):
    print(json.dumps(json.loads(cfg.to_json()), indent=1))


def simulate(args, cfg, parser):
    from collabfeat.simulate import simulate as make  # lazy: the command's own layer, imported when it runs

    sheet = make(cfg.simulator, args.out, cfg.data.source)
    print(json.dumps({k: v for k, v in sheet.items() if k != "parameters"}, indent=1))


def run_pipeline(args, cfg, parser):
    """demo and run: the pipeline under its supervisor, then the report."""
    from pipeline.report import format_report  # lazy: the command's own layer, imported when it runs
    from pipeline.supervise import (
        PipelineFailed,
        PipelineStopped,
    )  # lazy: the command's own layer, imported when it runs
    from pipeline.supervise import run as run_supervised  # lazy: the command's own layer, imported when it runs

    if args.no_cache:
        cfg.runner.cache = False
    if args.engine:
        cfg.runner.engine = args.engine
    if args.command == "run":
        overrides = {
            "logs": args.logs,
            "items": args.items,
            "image_dir": args.image_dir,
            "eval_items": args.eval_items,
            "transfer_items": args.transfer_items,
            "unseen_items": args.unseen_items,
        }
        for k, v in overrides.items():
            if v:
                setattr(cfg.data, k, v)
        if not cfg.data.logs:
            parser.exit(
                2, "collabfeat run: --logs (or data.logs) is required; `collabfeat demo` uses the default data\n"
            )
    log_path = os.path.abspath(os.path.join(cfg.runner.output_dir, cfg.runner.pipeline_name, "pipeline.log"))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    print(
        f"[collabfeat] running the pipeline (the default data takes about 10 minutes on 2 cores); its log: {log_path}",
        flush=True,
    )
    try:
        report = run_supervised(
            cfg,
            getattr(args, "until", "push"),
            log_path,
            echo=lambda line: print(line, flush=True),
            bars=sys.stdout.isatty(),
        )
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"collabfeat: {e}\n")
    except PipelineFailed as e:
        print(format_report(e.report))
        if e.report.get("html"):
            print(f"[collabfeat] the report with charts: file://{e.report['html']}")
        # stopped by a signal: the shell's convention, 128 + the signal's number
        parser.exit(128 + e.signum if isinstance(e, PipelineStopped) else 1, f"collabfeat: {e}\n")
    print(format_report(report))
    if report.get("html"):
        print(f"[collabfeat] the report with charts: file://{report['html']}", flush=True)
    if "push" in report and not report["push"].get("pushed"):
        sys.exit(3)


def explore(args, cfg, parser):
    from serving.explorer import explore as serve_page  # lazy: the command's own layer, imported when it runs

    logging.basicConfig(level=logging.WARNING)
    try:
        serve_page(
            args.model_base_path or os.path.join(cfg.serving.push_dir, cfg.serving.model_name),
            cfg.serving,
            args.host,
            args.port,
            args.version,
        )
    except FileNotFoundError as e:
        parser.exit(2, f"collabfeat explore: {e}\n")


def kubeflow(args, cfg, parser):
    from kubeflow import local  # lazy: the command's own layer, imported when it runs
    from kubeflow.runner import compile_pipeline  # lazy: the command's own layer, imported when it runs

    try:
        if args.execute_locally:
            cfg = local.local_config(cfg, args.execute_locally)
        spec = compile_pipeline(cfg, args.output)
        print(spec)
        if args.execute_locally:
            done = local.execute(cfg, spec, cfg.runner.kubeflow_pipeline_root, cfg.runner.container_repo_dir)
            print(
                f"[kubeflow-local] every task complete; pushed: {done['Pusher']['pushed_model']['artifacts'][0]['uri']}"
            )
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"collabfeat: {e}\n")
    except local.TaskFailed as e:
        parser.exit(1, f"collabfeat: kubeflow task {e}\n")


def serve(args, cfg, parser):
    from serving import registry, server  # lazy: the command's own layer, imported when it runs

    if args.port is not None:
        cfg.serving.port = args.port
    if args.models_config:
        models = registry.load_models_config(args.models_config)
    else:
        name = args.model_name or cfg.serving.model_name
        models = registry.single_model_config(name, args.model_base_path or os.path.join(cfg.serving.push_dir, name))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.serve(models, cfg.serving)


def query(args, parser):
    import grpc  # lazy: the command's own layer, imported when it runs

    from serving.client import Client  # lazy: the command's own layer, imported when it runs

    if not args.images and not args.id:
        parser.exit(2, "collabfeat query: give image files or --id ITEM\n")
    client = Client(args.server, args.model, args.version, args.tls_ca)
    try:
        blobs = []
        for path in args.images:
            with open(path, "rb") as f:
                blobs.append(f.read())
        results = []
        if blobs:
            if args.embedding:
                for path, e in zip(args.images, client.embed(blobs)):
                    print(json.dumps({"image": path, "embedding": [round(float(x), 6) for x in e]}))
                return
            out = client.similar(blobs, args.k)
            results += list(zip(args.images, out["ids"], out["scores"]))
        if args.id:
            out = client.similar_by_id(args.id, args.k)
            results += list(zip(args.id, out["ids"], out["scores"]))
        for query_name, ids, scores in results:
            print(
                json.dumps(
                    {
                        "query": query_name,
                        "version": int(out["_version"]),
                        "neighbours": [
                            {"item_id": i.decode(), "score": round(float(s), 6)} for i, s in zip(ids, scores)
                        ],
                    }
                )
            )
    except grpc.RpcError as e:
        parser.exit(1, f"collabfeat query: {e.code().name}: {e.details()}\n")
    except OSError as e:
        parser.exit(2, f"collabfeat query: {e}\n")
    finally:
        client.close()


if __name__ == "__main__":
    main()
