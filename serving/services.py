"""The gRPC services: TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus,
HandleReloadConfigRequest), over the registry's versions."""

from __future__ import annotations

import logging

import grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from collabfeat.config import ServingConfig
from serving import tensors
from serving.registry import Registry, Version
from serving.requests import EXPECTED, INT_TYPES, SIGNATURES, RequestError, invalid, read_input

log = logging.getLogger(__name__)


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
                    "embedding": version.embed(read_input(request.inputs, "images", [types_pb2.DT_STRING], 1, self.cfg))
                }
            else:
                k = int(read_input(request.inputs, "k", INT_TYPES, 0, self.cfg))
                if sig == "similar":
                    outputs = version.similar(
                        read_input(request.inputs, "images", [types_pb2.DT_STRING], 1, self.cfg), k
                    )
                else:
                    outputs = version.similar_by_id(
                        read_input(request.inputs, "ids", [types_pb2.DT_STRING], 1, self.cfg), k
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
