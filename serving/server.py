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

This module starts the server; the parts are serving.registry (models, versions, polling),
serving.batching, serving.requests (checks and errors) and serving.services (the gRPC servicers).
"""

from __future__ import annotations

import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from collabfeat.config import ServingConfig
from serving.registry import Registry
from serving.services import ModelService, PredictionService

SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


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
