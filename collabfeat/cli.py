"""The `collabfeat` command."""
from __future__ import annotations

import argparse
import json
import sys

from collabfeat import config as config_lib


def _config_args(p):
    p.add_argument("--config", help="a YAML file of settings (see collabfeat/config.py)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set cnn.epochs=3 (repeatable)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="collabfeat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default data and print the report")
    _config_args(p)
    p = sub.add_parser("run", help="run the pipeline on your own data")
    _config_args(p)
    p.add_argument("--logs", help="behaviour log file or directory (CSV, Parquet or TFRecord)")
    p.add_argument("--items", help="item table CSV: item_id,image[,label]")
    p.add_argument("--image-dir", help="directory that relative image paths are resolved against")
    p.add_argument("--eval-items", help="held-out labelled item table CSV for the evaluation")
    p.add_argument("--until", default="push", help="stop after this stage")
    p = sub.add_parser("simulate", help="write the simulated default data set to a directory")
    _config_args(p)
    p.add_argument("out")
    p = sub.add_parser("config", help="print the effective configuration as JSON")
    _config_args(p)

    args = parser.parse_args(argv)
    try:
        cfg = config_lib.load(args.config, args.set)
    except (ValueError, OSError) as e:
        parser.exit(2, f"collabfeat: {e}\n")

    if args.command == "config":
        print(json.dumps(json.loads(cfg.to_json()), indent=1))
    elif args.command == "simulate":
        from collabfeat.simulate import simulate
        sheet = simulate(cfg.simulator, args.out)
        print(json.dumps({k: v for k, v in sheet.items() if k != "parameters"}, indent=1))
    elif args.command in ("demo", "run"):
        from collabfeat.pipeline.run import format_report, run_local
        if args.command == "run":
            overrides = {"logs": args.logs, "items": args.items, "image_dir": args.image_dir,
                         "eval_items": args.eval_items}
            for k, v in overrides.items():
                if v:
                    setattr(cfg.data, k, v)
            if not cfg.data.logs:
                parser.exit(2, "collabfeat run: --logs (or data.logs) is required; `collabfeat demo` uses the default data\n")
        try:
            report = run_local(cfg, until=getattr(args, "until", "push"))
        except (ValueError, FileNotFoundError) as e:
            parser.exit(2, f"collabfeat: {e}\n")
        print(format_report(report))
        push = report.get("push", {})
        if "push" in report and not push.get("pushed"):
            sys.exit(3)


if __name__ == "__main__":
    main()
