"""A client for the TF Serving gRPC API (the official stubs), for our server or stock TF Serving."""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors


def channel(target: str, tls_ca: str = "", max_message_mb: int = 16) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", max_message_mb << 20),
        ("grpc.max_receive_message_length", max_message_mb << 20),
    ]

    if os.environ.get("COLLABFEAT_EXP_LOCAL_POOL"):
        options.append(("grpc.use_local_subchannel_pool", 1))
    if tls_ca:
        with open(tls_ca, "rb") as f:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()), options=options)
    return grpc.insecure_channel(target, options=options)


class Client:
    def __init__(
        self,
        target: str,
        model: str = "collabfeat",
        version: int | None = None,
        tls_ca: str = "",
        timeout: float = 30.0,
    ):
        self.channel = channel(target, tls_ca)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.model, self.version, self.timeout = model, version, timeout

    def _spec(self, spec, signature: str = ""):
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, signature)
        for name, value in inputs.items():
            req.inputs[name].CopyFrom(tensors.to_proto(value))
        resp = self.predict_stub.Predict(req, timeout=self.timeout)
        out = {name: tensors.from_proto(t) for name, t in resp.outputs.items()}
        out["_version"] = resp.model_spec.version.value
        return out

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        return self.predict("serving_default", {"images": np.array(images, dtype=object)})["embedding"]

    def similar(self, images: Sequence[bytes], k: int) -> dict[str, np.ndarray]:
        return self.predict("similar", {"images": np.array(images, dtype=object), "k": np.int32(k)})

    def similar_by_id(self, ids: Sequence[str], k: int) -> dict[str, np.ndarray]:
        return self.predict(
            "similar_by_id", {"ids": np.array([i.encode() for i in ids], dtype=object), "k": np.int32(k)}
        )

    def metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
        req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(req.model_spec)
        resp = self.predict_stub.GetModelMetadata(req, timeout=self.timeout)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        resp.metadata["signature_def"].Unpack(sigs)
        return sigs

    def status(self) -> list:
        req = get_model_status_pb2.GetModelStatusRequest()
        self._spec(req.model_spec)
        return list(self.model_stub.GetModelStatus(req, timeout=self.timeout).model_version_status)

    def close(self):
        self.channel.close()
