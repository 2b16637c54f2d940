"""A gRPC server with TensorFlow Serving's API (PredictionService, ModelService), in Python.

TF Serving's C++ binary cannot be installed on the development machines, and it cannot use ScaNN,
so this server implements the same API with the official generated stubs
(`tensorflow_serving.apis`), over the versions the pusher writes:

  <base_path>/<version>/  SavedModel (serving_default, similar) + assets.extra/ (ScaNN, item ids)

Signatures (PredictRequest.model_spec.signature_name; empty = serving_default)
  serving_default  images: DT_STRING [n]            -> embedding: DT_FLOAT [n, d]
  similar          images: DT_STRING [n], k: int    -> ids: DT_STRING [n, k], scores: DT_FLOAT [n, k]
                   the SavedModel's embedding + the version's ScaNN index
  similar_by_id    ids: DT_STRING [n], k: int       -> ids, scores of catalogue neighbours (self excluded)

Versions are found by polling; a new one is loaded completely before it is swapped in, and a
request keeps the version it started with, so a swap fails no request. The pusher writes versions
under a hidden name and renames them into place, so a half-written version is never seen.
Concurrent embedding requests are batched. Errors are gRPC status codes with a message:
INVALID_ARGUMENT (bad input, unknown signature, k out of range), NOT_FOUND (model, version,
item id), UNAVAILABLE (nothing loaded yet), RESOURCE_EXHAUSTED (message too large).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from collabfeat import images as images_lib
from collabfeat.config import ServingConfig
from collabfeat.images import MAX_IMAGE_PIXELS
from collabfeat.serving import index as scann_index
from collabfeat.serving import tensors
from collabfeat.serving.push import EXTRA, versions_on_disk

log = logging.getLogger("collabfeat.serving")
SIGNATURES = ("serving_default", "similar", "similar_by_id")
IMAGE_FORMATS = set(images_lib.FORMATS)  # what tf.io.decode_image reads
SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --- one loaded version ------------------------------------------------------------------------
class Batcher:
    """Runs fn(array) -> array once for the concatenation of concurrent calls, with no thread of
    its own: the first caller leads, runs the calls queued so far (up to batch_size rows) on its
    own thread and answers them; when more calls queued meanwhile, it hands the lead to the oldest.
    So a lone call runs at once on its own thread (no hand-off, no wait), and under load each
    batch holds what arrived while the previous one ran. `wait_s` > 0 makes a leader wait that long
    for company first. A failed batch is retried call by call, so one bad call fails alone."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], batch_size: int, wait_s: float = 0.0):
        self.fn, self.batch_size, self.wait_s = fn, batch_size, wait_s
        self.lock = threading.Lock()
        self.pending: list[_Call] = []
        self.leading = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) >= self.batch_size:
            return self.fn(x)
        call = _Call(x)
        with self.lock:
            self.pending.append(call)
            call.lead = not self.leading
            self.leading = True
        while not call.answered.is_set():
            if call.lead:
                call.lead = False
                self._lead()
            else:
                call.woken.wait()
                call.woken.clear()
        if call.error is not None:
            raise call.error
        return call.result

    def _lead(self):
        try:
            if self.wait_s > 0:
                time.sleep(self.wait_s)
            with self.lock:
                batch, rows = [], 0
                while self.pending and (not batch or rows + len(self.pending[0].x) <= self.batch_size):
                    batch.append(self.pending.pop(0))
                    rows += len(batch[-1].x)
            self._run(batch)
        finally:  # the oldest waiting call leads next, or nobody leads
            with self.lock:
                if self.pending:
                    self.pending[0].lead = True
                    self.pending[0].woken.set()
                else:
                    self.leading = False

    def _run(self, batch: list[_Call]):
        if len(batch) > 1:
            try:
                out = self.fn(np.concatenate([c.x for c in batch]))
                start = 0
                for c in batch:
                    c.answer(result=out[start : start + len(c.x)])
                    start += len(c.x)
                return
            except Exception:  # find the culprit: run each call on its own
                pass
        for c in batch:
            try:
                c.answer(result=self.fn(c.x))
            except Exception as e:
                c.answer(error=e)


class _Call:
    __slots__ = ("x", "result", "error", "lead", "answered", "woken")

    def __init__(self, x):
        self.x, self.result, self.error, self.lead = x, None, None, False
        self.answered, self.woken = threading.Event(), threading.Event()

    def answer(self, result=None, error=None):
        self.result, self.error = result, error
        self.answered.set()
        self.woken.set()


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
        self.index = scann_index.load(os.path.join(self.path, EXTRA))
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
        idx, scores = scann_index.search(self.index, queries, n)
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


def check_images(images: np.ndarray) -> None:
    """Header checks before any decoding: a real image, a format TF decodes, a sane size."""
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
        except Exception:
            raise invalid(f"images[{i}] is not an image ({len(data)} bytes)") from None
        if fmt not in IMAGE_FORMATS:
            raise invalid(f"images[{i}]: {fmt} is not supported (use one of {sorted(IMAGE_FORMATS)})")
        if w * h > MAX_IMAGE_PIXELS:
            raise invalid(f"images[{i}] has {w}x{h} pixels, more than {MAX_IMAGE_PIXELS}")


def first_undecodable(images: np.ndarray) -> int | None:
    for i, data in enumerate(images):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            return i
    return None


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


# --- the set of models and versions ------------------------------------------------------------
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


# --- the gRPC services -------------------------------------------------------------------------
def _input(inputs, name: str, dtypes, rank: int, cfg: ServingConfig) -> np.ndarray:
    if name not in inputs:
        raise invalid(f"missing input {name!r}")
    proto = inputs[name]
    if proto.dtype not in dtypes:
        want = " or ".join(types_pb2.DataType.Name(d) for d in dtypes)
        raise invalid(f"input {name!r} must be {want}, not {types_pb2.DataType.Name(proto.dtype)}")
    try:
        value = tensors.from_proto(proto)
    except Exception as e:
        raise invalid(f"input {name!r} is not a valid tensor: {e}") from None
    if value.ndim != rank:
        raise invalid(f"input {name!r} must have rank {rank}, not shape {list(value.shape)}")
    if rank == 1:
        if len(value) == 0:
            raise invalid(f"input {name!r} is empty")
        if len(value) > cfg.max_images:
            raise invalid(f"input {name!r} has {len(value)} entries, more than {cfg.max_images}")
    return value


INT_TYPES = (types_pb2.DT_INT32, types_pb2.DT_INT64)
EXPECTED = {"serving_default": {"images"}, "similar": {"images", "k"}, "similar_by_id": {"ids", "k"}}


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: Registry, cfg: ServingConfig):
        self.registry, self.cfg = registry, cfg

    def _version(self, spec) -> Version:
        if spec.version_label:
            raise invalid("version labels are not supported; name a version number")
        return self.registry.get(spec.name, spec.version.value if spec.HasField("version") else None)

    def Predict(self, request, context):
        try:
            version = self._version(request.model_spec)
            sig = request.model_spec.signature_name or "serving_default"
            if sig not in EXPECTED:
                raise invalid(f"signature {sig!r} not found (signatures: {', '.join(SIGNATURES)})")
            unknown = set(request.inputs) - EXPECTED[sig]
            if unknown:
                raise invalid(f"signature {sig!r} has no input(s) {sorted(unknown)} (inputs: {sorted(EXPECTED[sig])})")
            if sig == "serving_default":
                outputs = {
                    "embedding": version.embed(_input(request.inputs, "images", [types_pb2.DT_STRING], 1, self.cfg))
                }
            else:
                k = int(_input(request.inputs, "k", INT_TYPES, 0, self.cfg))
                if sig == "similar":
                    outputs = version.similar(_input(request.inputs, "images", [types_pb2.DT_STRING], 1, self.cfg), k)
                else:
                    outputs = version.similar_by_id(
                        _input(request.inputs, "ids", [types_pb2.DT_STRING], 1, self.cfg), k
                    )
            wanted = list(request.output_filter) or list(outputs)
            missing = [o for o in wanted if o not in outputs]
            if missing:
                raise invalid(f"output_filter names unknown output(s) {missing} (outputs: {sorted(outputs)})")
            response = predict_pb2.PredictResponse()
            response.model_spec.name, response.model_spec.signature_name = version.name, sig
            response.model_spec.version.value = version.number
            for name in wanted:
                response.outputs[name].CopyFrom(tensors.to_proto(outputs[name]))
            return response
        except RequestError as e:
            context.abort(e.code, e.message)
        except Exception as e:
            log.exception("Predict failed")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise invalid(f"metadata_field must be ['signature_def'], not {fields}")
            version = self._version(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = version.name
            response.model_spec.version.value = version.number
            sigs = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in version.signature_defs.items():
                sigs.signature_def[name].CopyFrom(sig)
            response.metadata["signature_def"].Pack(sigs)
            return response
        except RequestError as e:
            context.abort(e.code, e.message)

    def _unsupported(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "only Predict and GetModelMetadata are served")

    Classify = Regress = MultiInference = _unsupported


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        name = request.model_spec.name
        with self.registry.lock:
            known = name in self.registry.config
            states = dict(self.registry.states.get(name, {}))
        if not known:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served")
        if request.model_spec.HasField("version"):
            v = request.model_spec.version.value
            if v not in states:
                context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {v}")
            states = {v: states[v]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, (state, error) in sorted(states.items()):
            s = response.model_version_status.add(version=v, state=state)
            s.status.CopyFrom(status_pb2.StatusProto(error_code=2 if error else 0, error_message=error))
        return response

    def HandleReloadConfigRequest(self, request, context):
        try:
            self.registry.set_config(request.config)
            self.registry.poll()
        except RequestError as e:
            return model_management_pb2.ReloadConfigResponse(
                status=status_pb2.StatusProto(error_code=3, error_message=e.message)
            )
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))


# --- the server --------------------------------------------------------------------------------
def grpc_server(cfg: ServingConfig) -> grpc.Server:
    """The gRPC server every service here runs in (also the benchmark's no-op floor)."""
    limit = cfg.max_message_mb << 20
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )


class Server:
    def __init__(self, server_cfg: model_server_config_pb2.ModelServerConfig, cfg: ServingConfig):
        self.cfg = cfg
        self.registry = Registry(server_cfg, cfg)
        self.grpc = grpc_server(cfg)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.registry, cfg), self.grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.registry), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.registry.listeners.append(self._update_health)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert or cfg.tls_key:
            with open(cfg.tls_key, "rb") as k, open(cfg.tls_cert, "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.port = self.grpc.add_secure_port(address, creds)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind {address}")

    def _update_health(self):
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.registry.any_available()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("",) + SERVICES:
            self.health.set(service, status)

    def start(self):
        self._update_health()
        self.grpc.start()
        self.registry.start()
        return self

    def stop(self, grace: float = 5.0):
        self.health.enter_graceful_shutdown()
        self.registry.stopping.set()
        self.grpc.stop(grace).wait()


def serve(server_cfg, cfg: ServingConfig) -> None:
    """Runs until SIGINT or SIGTERM, then lets requests in flight finish."""
    server = Server(server_cfg, cfg).start()
    print(
        f"collabfeat serving on {cfg.host}:{server.port} ({'TLS' if cfg.tls_cert else 'plaintext'}); "
        f"models: {', '.join(server.registry.config)}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("collabfeat server: shutting down", flush=True)
    server.stop()
