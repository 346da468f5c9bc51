"""The compiled builders (adapter.documents, adapter.json_records) against the general path.

The builders are a speed-up only: for every layout they compile, they must give the
document the general path gives (same keys, same order, same values), and return None
(general path) for what they do not cover. Hypothesis makes layouts with colliding
names, odd types, static fields, origins and levels we do not know.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.documents import LEARN_AFTER, Documents
from adapter.json_records import JsonRecords
from adapter.parsers.base import FIELD_MAP, from_mapping
from adapter.pipeline import Pipeline, PipelineConfig

WALL = 1_767_225_600.25

FLAT_NAMES = [
    "@timestamp",
    "log.level",
    "message",
    "log.logger",
    "http.request.method",
    "http.response.status_code",
    "http.request",
    "url.path",
    "labels",
    "labels.x",
    "trace.id",
    "span.id",
    "traceparent",
    "stream",
    "log",
    "ecs",
    "host.name",
    "a",
    "a.b",
    "a.b.c",
]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["info", "WARN", "bogus", "E", "ABCDEF0123456789", "x", ""]),
    st.text(max_size=5),
    st.dictionaries(st.sampled_from(["k", "level"]), st.integers(0, 3), max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
)
statics = st.dictionaries(
    st.sampled_from(["service.name", "kubernetes.pod.name", "stream", "labels.team", "a"]),
    st.sampled_from(["svc", "pod-1"]),
    max_size=3,
)


def pipeline(static: dict[str, str], keep_original: bool, fmt: str = "auto") -> Pipeline:
    return Pipeline(
        PipelineConfig(format=fmt, static_fields=static, keep_original=keep_original, environ={})
    )


@settings(max_examples=250, deadline=None)
@given(
    partial=st.dictionaries(st.sampled_from(FLAT_NAMES), values, max_size=8),
    static=statics,
    origin=st.sampled_from([None, "/var/log/app.log"]),
    keep_original=st.booleans(),
    read_ns=st.sampled_from([None, 1_700_000_000_123_000_000]),
)
def test_a_compiled_layout_gives_the_general_document(
    partial: dict[str, Any],
    static: dict[str, str],
    origin: str | None,
    keep_original: bool,
    read_ns: int | None,
) -> None:
    if "@timestamp" in partial:
        partial["@timestamp"] = 1_700_000_000_000_000_000 + abs(hash(str(partial))) % 10**12
    p = pipeline(static, keep_original)
    docs = Documents(p._static, keep_original=keep_original)
    build = docs._compile(tuple(partial), origin is not None)
    expected = p._emit_general(copy.deepcopy(partial), "stderr", origin, "the line", WALL, read_ns)
    if build is None:
        return  # a layout left to the general path
    doc = build("the line", "stderr", origin, WALL, read_ns, *copy.deepcopy(partial).values())
    if doc is not None:
        assert json.dumps(doc) == json.dumps(expected)


keys = st.sampled_from(
    [
        *list(FIELD_MAP)[:60],
        "password",
        "Token",
        "http",
        "host",
        "log",
        "extra",
        "user",
        "a.b",
    ]
)
json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**18),
    st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=2e18),
    st.sampled_from(
        [
            "2024-01-02T03:04:05.123Z",
            "2024-02-30T03:04:05.123Z",
            "2016-12-31T23:59:60.000Z",
            "2024-01-02 03:04:05,123",
            "1704164645",
            "info",
            "warning",
            "bogus",
            "ABCDEF0123456789ABCDEF0123456789",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "42",
            "x",
        ]
    ),
    st.dictionaries(st.sampled_from(["level", "name", "method"]), st.text(max_size=3), max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
)


@settings(max_examples=250, deadline=None)
@given(
    obj=st.dictionaries(keys, json_values, max_size=8),
    static=statics,
    origin=st.sampled_from([None, "/var/log/app.log"]),
    keep_original=st.booleans(),
)
def test_a_compiled_json_layout_gives_the_general_document(
    obj: dict[str, Any], static: dict[str, str], origin: str | None, keep_original: bool
) -> None:
    p = pipeline(static, keep_original, "json")
    ctx = p._ctx
    ctx.wall = WALL
    text = json.dumps(obj)
    expected = p._emit_general(
        from_mapping(copy.deepcopy(obj), ctx), "stdout", origin, text, WALL, None
    )
    records = JsonRecords(ctx, p._static, keep_original=keep_original)
    build = records._compile((tuple(obj), tuple(map(type, obj.values()))), origin is not None)
    if build is None:
        return
    doc = build(text, "stdout", origin, WALL, None, *copy.deepcopy(obj).values())
    if doc is not None:
        assert json.dumps(doc) == json.dumps(expected)


def test_json_lines_of_one_layout_are_compiled_once_and_agree() -> None:
    """Through the pipeline: the first lines take the general path, the rest the builder."""
    lines = [
        b'{"time":"2024-01-02T03:04:05.%03dZ","level":"info","msg":"m%d","status":200,'
        b'"trace_id":"ABCDEF0123456789ABCDEF0123456789","extra":[1]}' % (i, i)
        for i in range(LEARN_AFTER + 3)
    ]
    p = pipeline({"service.name": "svc"}, False, "json")
    docs = p.feed_lines(lines, now=0.0, wall=WALL)
    assert p._json_records is not None and len(p._json_records.layouts) == 1
    assert docs[0] == {
        "@timestamp": "2024-01-02T03:04:05.000Z",
        "log": {"level": "info"},
        "message": "m0",
        "ecs": {"version": "8.11.0"},
        "http": {"response": {"status_code": 200}},
        "trace": {"id": "abcdef0123456789abcdef0123456789"},
        "labels": {"extra": [1]},
        "service": {"name": "svc"},
        "stream": "stdout",
    }
    for i, doc in enumerate(docs):
        assert list(doc) == list(docs[0])
        assert doc["message"] == f"m{i}"
        assert doc["@timestamp"] == f"2024-01-02T03:04:05.{i:03d}Z"
    assert p.stats.records_out == len(lines) and p.stats.by_format == {"json": len(lines)}


def test_a_value_the_builder_does_not_cover_takes_the_general_path() -> None:
    """A level word we do not know, a timestamp that is no date: same layout, general path."""
    p = pipeline({}, False, "json")
    good = [b'{"time":"2024-01-02T03:04:05.000Z","level":"info","msg":"ok"}'] * LEARN_AFTER
    odd = [
        b'{"time":"2024-01-02T03:04:05.000Z","level":"chatty","msg":"odd level"}',
        b'{"time":"2024-02-30T03:04:05.000Z","level":"info","msg":"no such day"}',
    ]
    docs = p.feed_lines(good + odd, now=0.0, wall=WALL)
    assert docs[-2]["labels"] == {"level": "chatty"} and "log" not in docs[-2]
    assert docs[-1]["labels"] == {"time": "2024-02-30T03:04:05.000Z"}
    assert docs[-1]["@timestamp"] == "2026-01-01T00:00:00.250Z"  # the time it was read
