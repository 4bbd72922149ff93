"""JSON schemas of the custom resources the Helm chart renders, for the objects kubernetes-validate
has no schema of (it knows only built-in kinds).

Written from the upstream API references, field by field, for the fields of each spec:
- `InferencePool`, `inference.networking.k8s.io/v1` (Gateway API Inference Extension API reference:
  InferencePoolSpec, Port, EndpointPickerRef);
- `ScaledObject`, `keda.sh/v1alpha1` (KEDA's ScaledObject specification and its prometheus scaler).
Unknown fields are refused (`additionalProperties: false`), as the API server refuses them for these
CRDs' structural schemas, so a misspelt or misplaced key fails here instead of at `kubectl apply`.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": _NAME, "namespace": _NAME,
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], "additionalProperties": False}


_PORT = _object({"number": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["number"])

INFERENCE_POOL_V1 = _object({
    "apiVersion": {"const": "inference.networking.k8s.io/v1"},
    "kind": {"const": "InferencePool"},
    "metadata": _METADATA,
    "spec": _object({
        # LabelSelector of v1: matchLabels only (same-namespace pods, Service-selector compatible)
        "selector": _object({"matchLabels": {"type": "object", "minProperties": 1, "maxProperties": 64,
                                             "additionalProperties": {"type": "string", "maxLength": 63}}},
                            ["matchLabels"]),
        # at most 8, unique; a Port has only `number`
        "targetPorts": {"type": "array", "minItems": 1, "maxItems": 8, "uniqueItems": True, "items": _PORT},
        "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
        "endpointPickerRef": {
            **_object({"group": {"type": "string", "maxLength": 253},
                       "kind": {"type": "string", "minLength": 1, "maxLength": 63},
                       "name": _NAME,
                       "port": _PORT,
                       "failureMode": {"enum": ["FailOpen", "FailClose"]}}, ["name"]),
            # `port` is required when the kind is Service (its default)
            "if": {"anyOf": [{"not": {"required": ["kind"]}},
                             {"properties": {"kind": {"const": "Service"}}, "required": ["kind"]}]},
            "then": {"required": ["port"]},
        },
    }, ["selector", "targetPorts", "endpointPickerRef"]),
}, ["apiVersion", "kind", "metadata", "spec"])

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}  # trigger metadata: strings only

SCALED_OBJECT_V1ALPHA1 = _object({
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"const": "ScaledObject"},
    "metadata": _METADATA,
    "spec": _object({
        "scaleTargetRef": _object({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": _NAME, "envSourceContainerName": {"type": "string"}}, ["name"]),
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "initialCooldownPeriod": {"type": "integer", "minimum": 0},
        "idleReplicaCount": {"type": "integer", "minimum": 0},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "fallback": _object({"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"},
                             "behavior": {"type": "string"}}, ["failureThreshold", "replicas"]),
        "advanced": {"type": "object"},
        "triggers": {"type": "array", "minItems": 1, "items": {
            **_object({"type": {"type": "string", "minLength": 1}, "name": {"type": "string"},
                       "metadata": _STRINGS, "useCachedMetrics": {"type": "boolean"},
                       "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                       "authenticationRef": _object({"name": _NAME, "kind": {"type": "string"}}, ["name"])},
                      ["type", "metadata"]),
            # the prometheus scaler's required metadata
            "if": {"properties": {"type": {"const": "prometheus"}}},
            "then": {"properties": {"metadata": {"required": ["serverAddress", "query", "threshold"]}}},
        }},
    }, ["scaleTargetRef", "triggers"]),
}, ["apiVersion", "kind", "metadata", "spec"])

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL_V1,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_V1ALPHA1,
}


def validate(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if `doc` breaks its kind's schema (KeyError: no schema here);
    also the cross-field rule a schema cannot say: minReplicaCount <= maxReplicaCount."""
    import jsonschema

    jsonschema.validate(doc, SCHEMAS[(doc["apiVersion"], doc["kind"])])
    spec = doc["spec"]
    if doc["kind"] == "ScaledObject" and spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        raise jsonschema.ValidationError("minReplicaCount exceeds maxReplicaCount", path=["spec", "minReplicaCount"])
