"""The run's data and directories: the embedded default data, generated once per simulator
setting, and the paths a run writes (its directory, MLMD database and report)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from collabfeat.config import Config
from collabfeat.simulate import simulate


def paths(cfg: Config):
    """(the run directory, its MLMD database, its report)."""
    root = os.path.abspath(os.path.join(cfg.runner.output_dir, cfg.runner.pipeline_name))
    return root, os.path.join(root, "metadata.sqlite"), os.path.join(root, "report.json")


def prepare_data(cfg: Config) -> Config:
    """Fills in the embedded default data (generated once per simulator setting) and makes paths absolute."""
    d = cfg.data
    if not d.logs:
        sim = json.dumps({**dataclasses.asdict(cfg.simulator), "source": d.source}, sort_keys=True)
        out = os.path.abspath(
            os.path.join(cfg.runner.output_dir, "data", "default-" + hashlib.sha256(sim.encode()).hexdigest()[:10])
        )
        if not os.path.exists(os.path.join(out, "datasheet.json")):
            print(f"[collabfeat] generating the default data in {out}", flush=True)
            simulate(cfg.simulator, out, d.source)
        d = dataclasses.replace(
            d,
            logs=os.path.join(out, "logs"),
            items=os.path.join(out, "items.csv"),
            image_dir=os.path.join(out, "images"),
            eval_items=os.path.join(out, "eval_items.csv"),
            transfer_items=(os.path.join(out, "transfer_items.csv") if cfg.simulator.n_transfer_images else ""),
            unseen_items=(
                os.path.join(out, "unseen_items.csv") if os.path.exists(os.path.join(out, "unseen_items.csv")) else ""
            ),
        )
    elif not d.items:
        raise ValueError("data.items (the item table with images) is required with data.logs")
    absolute = {
        f: os.path.abspath(getattr(d, f)) if getattr(d, f) and "://" not in getattr(d, f) else getattr(d, f)
        for f in ("logs", "items", "image_dir", "eval_items", "transfer_items", "unseen_items")
    }
    for name in ("logs", "items", "eval_items", "transfer_items", "unseen_items"):
        if absolute[name] and "://" not in absolute[name] and not os.path.exists(absolute[name]):
            raise FileNotFoundError(f"data.{name}: {absolute[name]} does not exist")
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **absolute))
