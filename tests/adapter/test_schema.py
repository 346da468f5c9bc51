"""ECS and OpenTelemetry output documents."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adapter import schema
from adapter.pipeline import Pipeline, PipelineConfig, encode_json
from adapter.schema import ECS_VERSION, nest_into, to_ecs, to_otel

NS = 1_704_164_645_123_000_000  # 2024-01-02T03:04:05.123Z


def test_ecs_document_shape_and_order() -> None:
    doc = to_ecs(
        {
            "@timestamp": NS,
            "log.level": "WARNING",
            "message": "slow",
            "http.response.status_code": 200,
            "url.path": "/x",
            "log.origin.file.line": 7,
            "labels": {"k": "v"},
            "stream": "stderr",
        }
    )
    assert doc == {
        "@timestamp": "2024-01-02T03:04:05.123Z",
        "log": {"level": "warn", "origin": {"file": {"line": 7}}},
        "message": "slow",
        "ecs": {"version": ECS_VERSION},
        "http": {"response": {"status_code": 200}},
        "url": {"path": "/x"},
        "labels": {"k": "v"},
        "stream": "stderr",
    }
    assert list(doc)[:3] == ["@timestamp", "log", "message"]


def test_ecs_unknown_level_goes_to_labels_and_no_level_means_absent() -> None:
    doc = to_ecs({"@timestamp": NS, "log.level": "chatty", "message": "m"})
    assert "log" not in doc and doc["labels"] == {"level": "chatty"}
    assert "log" not in to_ecs({"@timestamp": NS, "message": "m"})


def test_nest_into_conflict_goes_to_labels() -> None:
    doc: dict[str, Any] = {"service": "flat"}
    nest_into(doc, "service.name", "shop")
    assert doc == {"service": "flat", "labels": {"service.name": "shop"}}
    deep: dict[str, Any] = {}
    nest_into(deep, "a.b.c.d", 1)
    assert deep == {"a": {"b": {"c": {"d": 1}}}}


def test_otel_document() -> None:
    doc = to_otel(
        {
            "@timestamp": NS,
            "log.level": "WARNING",
            "message": "slow",
            "log.logger": "app.web",
            "trace.id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span.id": "00f067aa0ba902b7",
            "error.type": "TimeoutError",
            "error.stack_trace": "Traceback...",
            "source.ip": "10.0.0.1",
            "http.request.method": "GET",
            "kubernetes.pod.name": "web-0",
            "kubernetes.namespace": "shop",
            "service.name": "shop",
            "process.pid": 42,
            "stream": "stderr",
            "labels": {"user": 7},
        },
        NS + 1_000_000,
    )
    assert doc == {
        "timestamp": "2024-01-02T03:04:05.123Z",
        "observed_timestamp": "2024-01-02T03:04:05.124Z",
        "severity_text": "WARNING",
        "severity_number": 13,
        "body": "slow",
        "instrumentation_scope": {"name": "app.web"},
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "attributes": {
            "exception.type": "TimeoutError",
            "exception.stacktrace": "Traceback...",
            "client.address": "10.0.0.1",
            "http.request.method": "GET",
            "log.iostream": "stderr",
            "user": 7,
        },
        "resource": {
            "k8s.pod.name": "web-0",
            "k8s.namespace.name": "shop",
            "service.name": "shop",
            "process.pid": 42,
        },
    }


def test_pipeline_otel_and_keep_original() -> None:
    p = Pipeline(PipelineConfig(schema="otel", keep_original=True, environ={"POD_NAME": "web-0"}))
    line = b'{"level":"error","msg":"x","time":"2024-01-02T03:04:05.123Z"}'
    (doc,) = p.feed(line, now=0.0, wall=1_704_164_646.0)
    assert doc["severity_number"] == 17 and doc["severity_text"] == "error"
    assert doc["body"] == "x"
    assert doc["timestamp"] == "2024-01-02T03:04:05.123Z"
    assert doc["observed_timestamp"] == "2024-01-02T03:04:06.000Z"
    assert doc["attributes"]["log.record.original"] == line.decode()
    assert doc["resource"]["k8s.pod.name"] == "web-0"


def test_encode_json_edge_cases() -> None:
    assert json.loads(encode_json({"m": "é ✓ \u2028"})) == {"m": "é ✓ \u2028"}
    lone = encode_json({"m": "\udc80x"})  # a lone surrogate cannot be UTF-8: escaped instead
    assert json.loads(lone) == {"m": "\udc80x"}
    lone.decode("utf-8")
    assert json.loads(encode_json({"n": float("inf"), "big": 2**70})) == {"n": None, "big": 2**70}
    assert b"\n" not in encode_json({"m": "a\nb"})


# The compiled shape builders must give exactly the general nesting's document (same keys,
# same order), whatever the field names, including the colliding ones they refuse to compile.
_NAMES = st.sampled_from(
    [
        "labels",
        "stream",
        "tags",
        "log",
        "ecs",
        "message.x",
        "log.file.path",
        "log.logger",
        "ecs.version",
        "ecs.extra",
        "http.request.method",
        "http.request",
        "http.response.status_code",
        "a.b.c.d",
        "a.b",
        "a",
        "url.path",
        "source.ip",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(_NAMES, max_size=8, unique=True),
    level=st.sampled_from([None, "INFO", "nonsense"]),
    message=st.sampled_from([None, "m"]),
)
def test_compiled_shapes_match_the_general_nesting(
    keys: list[str], level: str | None, message: str | None
) -> None:
    def partial() -> dict[str, Any]:
        p: dict[str, Any] = {"@timestamp": 1_704_164_645_123_000_000}
        if level is not None:
            p["log.level"] = level
        if message is not None:
            p["message"] = message
        for i, key in enumerate(keys):
            p[key] = {"k": i} if key == "labels" else f"v{i}"
        return p

    expected = json.dumps(schema._to_ecs_reference(partial()))
    for _ in range(schema._LEARN_AFTER + 2):  # past the point where the shape is compiled
        assert json.dumps(to_ecs(partial())) == expected


def test_a_repeated_shape_is_compiled_and_a_colliding_one_is_not() -> None:
    clean = ("http.request.method", "url.path", "labels", "stream")
    colliding = ("a", "a.b", "stream")
    for _ in range(schema._LEARN_AFTER + 1):
        for keys in (clean, colliding):
            doc = to_ecs(
                {"@timestamp": 0, "log.level": "info", "message": "m", **dict.fromkeys(keys, "v")}
            )
            assert doc["message"] == "m" and doc["log"] == {"level": "info"}
    shapes = schema._SHAPES[3]  # with a level and a message
    assert shapes.plans[clean] is not None
    assert shapes.plans[colliding] is None
    assert to_ecs(
        {"@timestamp": 0, "log.level": "info", "message": "m", **dict.fromkeys(colliding, "v")}
    )["labels"] == {"a.b": "v"}
