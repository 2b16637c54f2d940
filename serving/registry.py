"""The models and versions the server holds: TF Serving's models.config and version policy, versions found by polling
and loaded completely before they are swapped in (a request keeps the version it started with)."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from collabfeat.config import ServingConfig
from serving import store
from serving.batching import Batcher
from serving.requests import RequestError, check_images, first_undecodable, invalid
from serving.store import EXTRA, versions_on_disk

log = logging.getLogger(__name__)


@dataclass
class Version:
    name: str
    number: int
    path: str
    cfg: ServingConfig
    signature_defs: dict[str, meta_graph_pb2.SignatureDef] = field(default_factory=dict)

    def load(self) -> Version:
        self.model = tf.saved_model.load(self.path)
        self._embed_fn = self.model.signatures["serving_default"]
        sm = saved_model_pb2.SavedModel()
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            sm.ParseFromString(f.read())
        self.signature_defs = dict(sm.meta_graphs[0].signature_def)
        self.signature_defs.pop("__saved_model_init_op", None)
        self.signature_defs["similar_by_id"] = similar_by_id_signature()
        self.index = store.load_index(os.path.join(self.path, EXTRA))
        self.item_ids = np.array([i.encode("utf-8") for i in self.index["item_ids"]], dtype=object)  # as answered
        self.row = {item: i for i, item in enumerate(self.index["item_ids"])}
        with open(os.path.join(self.path, EXTRA, "config.json")) as f:
            self.run_cfg = json.load(f)  # the configuration of the run that pushed this version
        self.max_k = min(self.run_cfg["serving"]["max_k"], len(self.item_ids))
        self.batcher = Batcher(self._embed, self.cfg.batch_size, self.cfg.batch_wait_ms / 1000)
        self._embed(np.array([_tiny_png()], dtype=object))  # warm up the graph before serving
        return self

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self._embed_fn(images=tf.constant(images, dtype=tf.string))["embedding"].numpy()

    def embed(self, images: np.ndarray) -> np.ndarray:
        check_images(images)
        try:
            return self.batcher(images)
        except tf.errors.InvalidArgumentError as e:
            bad = first_undecodable(images)
            where = f"images[{bad}]" if bad is not None else "images"
            raise invalid(f"{where} is not a decodable image: {e.message.splitlines()[0]}") from None

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise invalid(f"k must be in [1, {self.max_k}] for model {self.name} version {self.number}, not {k}")
        return k

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n nearest catalogue rows and their scores."""
        idx, scores = store.search(self.index, queries, n)
        return np.asarray(idx), np.asarray(scores, np.float32)

    def similar(self, images: np.ndarray, k: int) -> dict[str, np.ndarray]:
        k = self.check_k(k)
        idx, scores = self.search(self.embed(images), k)
        return {"ids": self.item_ids[idx], "scores": scores}

    def similar_by_id(self, ids: np.ndarray, k: int) -> dict[str, np.ndarray]:
        k = self.check_k(k)
        rows = []
        for item in ids:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            row = self.row.get(text)
            if row is None:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"item {text!r} is not in the catalogue of {self.name} version {self.number}",
                )
            rows.append(row)
        width = min(k, len(self.item_ids) - 1)
        idx, scores = self.search(self.index["embeddings"][rows], width + 1)
        drop = idx == np.asarray(rows)[:, None]  # the item itself, or the last neighbour where the
        drop[~drop.any(axis=1), -1] = True  # search did not return it
        keep = ~drop
        return {
            "ids": self.item_ids[idx[keep].reshape(len(rows), width)],
            "scores": scores[keep].reshape(len(rows), width),
        }


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def similar_by_id_signature() -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, dtype, dims in (("ids", types_pb2.DT_STRING, [-1]), ("k", types_pb2.DT_INT32, [])):
        t = sig.inputs[name]
        t.name, t.dtype = name, dtype
        for d in dims:
            t.tensor_shape.dim.add(size=d)
    for name, dtype in (("ids", types_pb2.DT_STRING), ("scores", types_pb2.DT_FLOAT)):
        t = sig.outputs[name]
        t.name, t.dtype = name, dtype
        t.tensor_shape.dim.add(size=-1)
        t.tensor_shape.dim.add(size=-1)
    return sig


def load_models_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    with open(path) as f:
        return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    cfg = model_server_config_pb2.ModelServerConfig()
    cfg.model_config_list.config.add(name=name, base_path=os.path.abspath(base_path), model_platform="tensorflow")
    return cfg


def wanted_versions(model_cfg, on_disk: list[int]) -> list[int]:
    """TF Serving's version policy: latest N (default 1), all, or specific versions."""
    policy = model_cfg.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return sorted(on_disk)
    if choice == "specific":
        return sorted(set(on_disk) & set(policy.specific.versions))
    n = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return sorted(on_disk)[-n:]


class Registry:
    def __init__(self, server_cfg: model_server_config_pb2.ModelServerConfig, cfg: ServingConfig):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.poll_lock = threading.Lock()
        self.models: dict[str, dict[int, Version]] = {}
        self.states: dict[str, dict[int, tuple[int, str]]] = {}
        self.failed: dict[str, float] = {}
        self.set_config(server_cfg)
        self.stopping = threading.Event()
        self.listeners: list[Callable[[], None]] = []

    def set_config(self, server_cfg):
        if server_cfg.WhichOneof("config") != "model_config_list":
            raise invalid("only model_config_list configurations are supported")
        names = [c.name for c in server_cfg.model_config_list.config]
        if len(set(names)) != len(names) or not all(names):
            raise invalid(f"model names must be unique and non-empty: {names}")
        with self.lock:
            self.config = {c.name: c for c in server_cfg.model_config_list.config}

    def poll(self):
        """Loads wanted versions that are new, then swaps; unloads versions no longer wanted."""
        with self.poll_lock:
            with self.lock:
                config = dict(self.config)
            for name, mc in config.items():
                current = self.models.get(name, {})
                wanted = wanted_versions(mc, versions_on_disk(mc.base_path))
                loaded = dict(current)
                for v in wanted:
                    path = os.path.join(mc.base_path, str(v))
                    if v in loaded or self.failed.get(path) == os.path.getmtime(path):
                        continue
                    self._state(name, v, get_model_status_pb2.ModelVersionStatus.LOADING, "")
                    try:
                        loaded[v] = Version(name, v, path, self.cfg).load()
                        self._state(name, v, get_model_status_pb2.ModelVersionStatus.AVAILABLE, "")
                        log.info("loaded %s version %d from %s", name, v, path)
                    except Exception as e:  # a broken version is reported, not retried until it changes
                        self.failed[path] = os.path.getmtime(path)
                        self._state(name, v, get_model_status_pb2.ModelVersionStatus.END, f"load failed: {e}")
                        log.error("cannot load %s version %d: %s", name, v, e)
                for v in list(loaded):
                    if v not in wanted:
                        loaded.pop(v)  # requests holding it finish with it
                        self._state(name, v, get_model_status_pb2.ModelVersionStatus.END, "")
                        log.info("unloaded %s version %d", name, v)
                with self.lock:
                    self.models[name] = loaded
            with self.lock:
                for name in list(self.models):
                    if name not in self.config:
                        self.models.pop(name)
            for fn in self.listeners:
                fn()

    def _state(self, name, version, state, error):
        with self.lock:
            self.states.setdefault(name, {})[version] = (state, error)

    def get(self, name: str, version: int | None) -> Version:
        with self.lock:
            if name not in self.config:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served (models: {sorted(self.config)})"
                )
            versions = self.models.get(name, {})
            if not versions:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {name!r} has no version loaded yet")
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version} (loaded: {sorted(versions)})"
                )
            return versions[version]

    def any_available(self) -> bool:
        with self.lock:
            return any(self.models.values())

    def run(self):
        while not self.stopping.wait(self.cfg.poll_seconds):
            try:
                self.poll()
            except Exception:
                log.exception("polling for versions failed")

    def start(self):
        self.poll()
        threading.Thread(target=self.run, daemon=True, name="version-poller").start()
