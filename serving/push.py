"""Pushing a version for serving: <push_dir>/<model name>/<version>/

  saved_model.pb, variables/        the serving SavedModel (serving/export.py)
  assets.extra/scann/               the serialised ScaNN searcher
  assets.extra/item_ids.txt         row i of the index is this item id
  assets.extra/embeddings.npy       the catalogue's embeddings
  assets.extra/config.json          the run configuration

The version is written under a hidden temporary name and renamed into place, so a server
polling the directory never sees a half-written version. Versions are increasing integers.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import List

from collabfeat.config import Config
from collabfeat.serving import export, index as scann_index

EXTRA = "assets.extra"


def versions_on_disk(model_dir: str) -> List[int]:
    """Integer-named version directories holding a SavedModel (hidden temporary ones never match)."""
    try:
        names = os.listdir(model_dir)
    except FileNotFoundError:
        return []
    return [int(n) for n in names if n.isdigit() and os.path.exists(os.path.join(model_dir, n, "saved_model.pb"))]


def newest_version(model_dir: str) -> str:
    """The path of the newest pushed version; FileNotFoundError when there is none."""
    versions = versions_on_disk(model_dir)
    if not versions:
        raise FileNotFoundError(f"no pushed version under {model_dir}: run `./run demo` first")
    return os.path.join(model_dir, str(max(versions)))


def next_version(model_dir: str) -> int:
    existing = [int(n) for n in os.listdir(model_dir) if n.isdigit()] if os.path.isdir(model_dir) else []
    return max([int(time.time())] + [v + 1 for v in existing])


def push(net, index_dir: str, cfg: Config) -> str:
    model_dir = os.path.abspath(os.path.join(cfg.serving.push_dir, cfg.serving.model_name))
    os.makedirs(model_dir, exist_ok=True)
    version = next_version(model_dir)
    tmp = os.path.join(model_dir, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    idx = scann_index.load(index_dir)
    export.export(net, cfg.cnn.image_size, idx["embeddings"], idx["item_ids"], cfg.serving.max_k, tmp)
    extra = os.path.join(tmp, EXTRA)
    shutil.copytree(index_dir, extra, ignore=shutil.ignore_patterns("report.json"))
    with open(os.path.join(extra, "config.json"), "w") as f:
        f.write(cfg.to_json())
    final = os.path.join(model_dir, str(version))
    os.rename(tmp, final)
    return final
