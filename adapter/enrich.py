"""Enrichment: Kubernetes metadata, static fields and trace context added to each record.

Kubernetes metadata comes from the Downward API environment the pod spec sets
(``POD_NAME: fieldRef metadata.name`` and so on): no API server access, no
RBAC, nothing to watch. Static fields are the operator's (``service.name``
...); a value the line itself carries wins over a static default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sidecar_common.errors import ConfigError

# Downward API variable -> ECS field.
KUBERNETES_ENV: dict[str, str] = {
    "POD_NAME": "kubernetes.pod.name",
    "POD_NAMESPACE": "kubernetes.namespace",
    "POD_UID": "kubernetes.pod.uid",
    "POD_IP": "kubernetes.pod.ip",
    "NODE_NAME": "kubernetes.node.name",
    "CONTAINER_NAME": "kubernetes.container.name",
}
_FIELD_NAME = re.compile(r"[A-Za-z_@][\w-]*(?:\.[A-Za-z_][\w-]*)*")
# Fields the pipeline computes itself: a static value there would be overwritten or confuse readers.
_RESERVED = frozenset({"@timestamp", "message", "log.level", "ecs.version", "event.original"})
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_HEX_DIGITS = "0123456789abcdef"


def kubernetes_fields(environ: Mapping[str, str]) -> dict[str, str]:
    """kubernetes.* fields from the Downward API variables that are set and non-empty."""
    return {target: environ[name] for name, target in KUBERNETES_ENV.items() if environ.get(name)}


def validate_static(fields: Mapping[str, str], *, setting: str = "--field") -> dict[str, str]:
    """Static fields, checked: dotted names, not one the pipeline sets itself."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if not _FIELD_NAME.fullmatch(name) or name in _RESERVED:
            raise ConfigError(
                setting, f"{name}={value}", "a dotted field name such as service.name=VALUE"
            )
        out[name] = value
    return out


def static_fields(environ: Mapping[str, str], fields: Mapping[str, str]) -> dict[str, str]:
    """Everything added to every record: Kubernetes metadata, then the operator's fields."""
    out = kubernetes_fields(environ)
    out.update(validate_static(fields))
    return out


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """(trace id, span id) of a W3C ``traceparent`` value, None if it is not a valid one."""
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, _flags = m.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def lift_trace(partial: dict[str, Any]) -> None:
    """trace.id/span.id from a traceparent field; hex ids normalised to lower case."""
    tp = partial.pop("traceparent", None)
    if isinstance(tp, str):
        ids = parse_traceparent(tp)
        if ids is not None:
            partial.setdefault("trace.id", ids[0])
            partial.setdefault("span.id", ids[1])
        else:
            labels = partial.setdefault("labels", {})
            if isinstance(labels, dict):
                labels["traceparent"] = tp
    for key in ("trace.id", "span.id"):
        value = partial.get(key)
        if isinstance(value, str):
            partial[key] = hex_id(value)


def hex_id(value: str) -> str:
    """A trace or span id in lower case when it is hex in any case; else as it was."""
    if not value.strip(_HEX_DIGITS):
        return value
    lowered = value.lower()
    return value if lowered.strip(_HEX_DIGITS) else lowered
