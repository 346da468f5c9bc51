"""Enrichment: Kubernetes Downward API, static fields, trace context."""

from __future__ import annotations

import pytest

from adapter.enrich import (
    kubernetes_fields,
    lift_trace,
    parse_traceparent,
    static_fields,
    validate_static,
)
from adapter.pipeline import Pipeline, PipelineConfig
from sidecar_common.errors import ConfigError

ENV = {
    "POD_NAME": "web-7d9f",
    "POD_NAMESPACE": "shop",
    "NODE_NAME": "node-3",
    "POD_IP": "10.1.2.3",
    "CONTAINER_NAME": "app",
    "POD_UID": "",
    "HOME": "/root",
}


def test_kubernetes_fields_from_downward_api() -> None:
    assert kubernetes_fields(ENV) == {
        "kubernetes.pod.name": "web-7d9f",
        "kubernetes.namespace": "shop",
        "kubernetes.pod.ip": "10.1.2.3",
        "kubernetes.node.name": "node-3",
        "kubernetes.container.name": "app",
    }
    assert kubernetes_fields({}) == {}


def test_static_fields_validated() -> None:
    assert static_fields({}, {"service.name": "shop", "labels.team": "a"}) == {
        "service.name": "shop",
        "labels.team": "a",
    }
    for bad in (
        {"": "x"},
        {"a..b": "x"},
        {"message": "x"},
        {"@timestamp": "x"},
        {"has space": "x"},
    ):
        with pytest.raises(ConfigError):
            validate_static(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("garbage", None),
    ],
)
def test_parse_traceparent(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(value) == expected


def test_lift_trace() -> None:
    partial = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    lift_trace(partial)
    assert partial == {
        "trace.id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span.id": "00f067aa0ba902b7",
    }
    bad = {"traceparent": "nope", "trace.id": "ABCDEF"}
    lift_trace(bad)
    assert bad == {"labels": {"traceparent": "nope"}, "trace.id": "abcdef"}


def test_pipeline_enriches_every_record_and_line_values_win() -> None:
    p = Pipeline(
        PipelineConfig(
            environ=ENV, static_fields={"service.name": "default", "service.version": "1.2"}
        )
    )
    lines = [
        b'{"msg":"a","service":"from-line","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}',
        b"time=2024-01-02T03:04:05Z msg=b"
        b" trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7",
    ]
    out = []
    for line in lines:
        out += p.feed(line, now=0.0, wall=1e9)
    out += p.flush()
    a, b = out
    assert a["kubernetes"] == {
        "pod": {"name": "web-7d9f", "ip": "10.1.2.3"},
        "namespace": "shop",
        "node": {"name": "node-3"},
        "container": {"name": "app"},
    }
    assert a["service"] == {"name": "from-line", "version": "1.2"}
    assert a["trace"] == {"id": "4bf92f3577b34da6a3ce929d0e0e4736"} and a["span"] == {
        "id": "00f067aa0ba902b7"
    }
    assert b["service"] == {"name": "default", "version": "1.2"}
    assert b["trace"]["id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
