"""Table-driven tests of the structured parsers: JSON, logfmt, access, CRI, docker, custom."""

from __future__ import annotations

from typing import Any

import pytest

from adapter.parsers import FORMATS, CustomParser, ParseContext, cri, docker
from adapter.timestamps import TimestampParser
from sidecar_common.errors import ConfigError

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def ctx(zone: str = "UTC", secret: frozenset[str] = frozenset()) -> ParseContext:
    return ParseContext(timestamps=TimestampParser(zone), wall=WALL, secret_keys=secret)


def ns(text: str) -> int:
    found = TimestampParser().parse_iso(text)
    assert found is not None
    return found[0]


JSON_CASES: list[tuple[str, dict[str, Any]]] = [
    (  # pino
        '{"level":30,"time":1704164645123,"pid":4242,"hostname":"web-1"'
        ',"msg":"request completed","reqId":7}',
        {
            "log.level": 30,
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "process.pid": 4242,
            "host.name": "web-1",
            "message": "request completed",
            "labels": {"reqId": 7},
        },
    ),
    (  # zap production
        '{"level":"error","ts":1704164645.5,"caller":"server/main.go:42"'
        ',"msg":"dial failed","error":"connection refused"}',
        {
            "log.level": "error",
            "@timestamp": ns("2024-01-02T03:04:05.5Z"),
            "log.origin.file.name": "server/main.go:42",
            "message": "dial failed",
            "error.message": "connection refused",
        },
    ),
    (  # logrus
        '{"level":"warning","msg":"disk almost full","time":"2024-01-02T04:04:05+01:00"'
        ',"free_mb":120}',
        {
            "log.level": "warning",
            "message": "disk almost full",
            "@timestamp": ns("2024-01-02T03:04:05Z"),
            "labels": {"free_mb": 120},
        },
    ),
    (  # an ECS logger's output, nested objects
        '{"@timestamp":"2024-01-02T03:04:05.000Z","log":{"level":"INFO","logger":"app.db"},"message":"hi",'
        '"service":{"name":"shop"},"trace":{"id":"4bf92f3577b34da6a3ce929d0e0e4736"},"custom":{"a":[1,2]}}',
        {
            "@timestamp": ns("2024-01-02T03:04:05Z"),
            "log.level": "INFO",
            "log.logger": "app.db",
            "message": "hi",
            "service.name": "shop",
            "trace.id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "labels": {"custom": {"a": [1, 2]}},
        },
    ),
    (  # structlog: "event" is the message; a second message-like key goes to labels
        '{"event":"user logged in","msg":"dup","level":"info"'
        ',"timestamp":"2024-01-02T03:04:05.123456Z"}',
        {
            "message": "user logged in",
            "log.level": "info",
            "@timestamp": ns("2024-01-02T03:04:05.123456Z"),
            "labels": {"msg": "dup"},
        },
    ),
    (  # non-string message and an unparseable time stay (message as JSON text, time in labels)
        '{"msg":{"a":1},"time":"yesterday","status":"200"}',
        {"message": '{"a": 1}', "labels": {"time": "yesterday"}, "http.response.status_code": 200},
    ),
    (  # NaN is not JSON, but python's json module writes it: kept as a string
        '{"msg":"x","ratio":NaN}',
        {"message": "x", "labels": {"ratio": "NaN"}},
    ),
]


@pytest.mark.parametrize(("line", "expected"), JSON_CASES)
def test_json_lines(line: str, expected: dict[str, Any]) -> None:
    assert FORMATS["json"](line, ctx()) == expected


@pytest.mark.parametrize("line", ["", "{", "[1,2]", '"text"', "{}x", "not json", "{'single': 1}"])
def test_json_rejects_non_objects(line: str) -> None:
    assert FORMATS["json"](line, ctx()) is None


def test_json_secret_keys_masked_by_key() -> None:
    out = FORMATS["json"](
        '{"msg":"login","Password":"hunter2","token":123}',
        ctx(secret=frozenset({"password", "token"})),
    )
    assert out == {"message": "login", "labels": {"Password": "[REDACTED]", "token": "[REDACTED]"}}


def test_json_too_deep_is_not_parsed() -> None:
    line = '{"a":' + "[" * 300 + "]" * 300 + "}"
    assert FORMATS["json"](line, ctx()) is None


LOGFMT_CASES: list[tuple[str, dict[str, Any] | None]] = [
    (
        'time=2024-01-02T03:04:05Z level=info msg="hello world" user=42',
        {
            "@timestamp": ns("2024-01-02T03:04:05Z"),
            "log.level": "info",
            "message": "hello world",
            "labels": {"user": "42"},
        },
    ),
    (  # Grafana/Loki style with escaped quotes, and a bare flag
        'ts=2024-01-02T03:04:05.1Z caller=main.go:10 level=warn msg="said \\"hi\\"" retry',
        {
            "@timestamp": ns("2024-01-02T03:04:05.1Z"),
            "log.origin.file.name": "main.go:10",
            "log.level": "warn",
            "message": 'said "hi"',
            "labels": {"retry": True},
        },
    ),
    (
        "at=info method=GET path=/ status=200",
        {
            "labels": {"at": "info"},
            "http.request.method": "GET",
            "url.path": "/",
            "http.response.status_code": 200,
        },
    ),
    ("key=value", None),  # one pair is not enough to call it logfmt
    ("hello key=value other=x", None),  # must start with key=
    ('msg="unterminated', None),
]


@pytest.mark.parametrize(("line", "expected"), LOGFMT_CASES)
def test_logfmt(line: str, expected: dict[str, Any] | None) -> None:
    assert FORMATS["logfmt"](line, ctx()) == expected


ACCESS_CASES: list[tuple[str, dict[str, Any] | None]] = [
    (  # Apache common
        '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
        {
            "@timestamp": ns("2000-10-10T20:55:36Z"),
            "source.address": "127.0.0.1",
            "source.ip": "127.0.0.1",
            "user.name": "frank",
            "http.request.method": "GET",
            "url.original": "/apache_pb.gif",
            "url.path": "/apache_pb.gif",
            "http.version": "1.0",
            "http.response.status_code": 200,
            "http.response.body.bytes": 2326,
        },
    ),
    (  # nginx combined, IPv6 client, query string, escaped quote in the agent
        '2001:db8::1 - - [02/Jan/2024:03:04:05 +0000] "POST /api/items?page=2 HTTP/1.1" 201 0'
        ' "-" "curl/8.5 \\x22x\\x22"',
        {
            "@timestamp": ns("2024-01-02T03:04:05Z"),
            "source.address": "2001:db8::1",
            "source.ip": "2001:db8::1",
            "http.request.method": "POST",
            "url.original": "/api/items?page=2",
            "url.path": "/api/items",
            "url.query": "page=2",
            "http.version": "1.1",
            "http.response.status_code": 201,
            "http.response.body.bytes": 0,
            "user_agent.original": "curl/8.5 \\x22x\\x22",
        },
    ),
    (  # a garbage request line (a TLS handshake sent to a plain port) and "-" size
        '10.0.0.7 - - [02/Jan/2024:03:04:05 +0000] "\\x16\\x03\\x01" 400 - "-" "-"',
        {
            "@timestamp": ns("2024-01-02T03:04:05Z"),
            "source.address": "10.0.0.7",
            "source.ip": "10.0.0.7",
            "url.original": "\\x16\\x03\\x01",
            "http.response.status_code": 400,
        },
    ),
    ('127.0.0.1 - - [not a time at all, no no no] "GET / HTTP/1.1" 200 1', None),
    ("127.0.0.1 hello", None),
]


@pytest.mark.parametrize(("line", "expected"), ACCESS_CASES)
def test_access(line: str, expected: dict[str, Any] | None) -> None:
    out = FORMATS["access"](line, ctx())
    if expected is None:
        assert out is None
        return
    assert out is not None
    assert out.pop("message") == line
    assert out == expected


def test_access_combined_with_extra_fields_keeps_them() -> None:
    line = (
        '1.2.3.4 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 200 5 "-" "ua" 0.012 "upstream"'
    )
    out = FORMATS["access"](line, ctx())
    assert out is not None and out["labels"] == {"extra": '0.012 "upstream"'}


def test_cri_split() -> None:
    c = ctx()
    assert cri.split("2024-01-02T03:04:05.123456789Z stdout F hello world", c) == (
        ns("2024-01-02T03:04:05.123456789Z"),
        "stdout",
        False,
        "hello world",
    )
    assert cri.split("2024-01-02T03:04:05.1+01:00 stderr P part", c) == (
        ns("2024-01-02T02:04:05.1Z"),
        "stderr",
        True,
        "part",
    )
    assert cri.split("2024-01-02T03:04:05Z stdout F ", c) == (
        ns("2024-01-02T03:04:05Z"),
        "stdout",
        False,
        "",
    )
    assert cri.split("2024-01-02T03:04:05Z stdout F", c) == (
        ns("2024-01-02T03:04:05Z"),
        "stdout",
        False,
        "",
    )
    assert cri.split("2024-01-02T03:04:05Z stdin F x", c) is None
    assert cri.split("2024-01-02T03:04:05Z stdout X x", c) is None
    assert cri.split("2024-01-02 03:04:05 stdout F x", c) is None


def test_docker_split() -> None:
    c = ctx()
    assert docker.split(
        '{"log":"hello\\n","stream":"stderr","time":"2024-01-02T03:04:05.5Z"}', c
    ) == (
        ns("2024-01-02T03:04:05.5Z"),
        "stderr",
        False,
        "hello",
    )
    assert docker.split('{"log":"part","stream":"stdout","time":"2024-01-02T03:04:05Z"}', c) == (
        ns("2024-01-02T03:04:05Z"),
        "stdout",
        True,
        "part",
    )
    assert (
        docker.split('{"log":"x\\n","stream":"elsewhere","time":"2024-01-02T03:04:05Z"}', c) is None
    )
    assert docker.split('{"msg":"x"}', c) is None


def test_custom_parser_named_groups() -> None:
    parser = CustomParser(
        [
            r"(?P<time>\S+) \[(?P<level>\w+)\] (?P<http__request__method>[A-Z]+) (?P<msg>.*)",
            r"(?P<message>.*)",
        ]
    )
    assert parser("2024-01-02T03:04:05Z [WARN] GET slow request", ctx()) == {
        "@timestamp": ns("2024-01-02T03:04:05Z"),
        "log.level": "WARN",
        "http.request.method": "GET",
        "message": "slow request",
    }
    assert parser("anything else", ctx()) == {"message": "anything else"}


@pytest.mark.parametrize("patterns", [[], ["(unclosed"], ["no groups here"]])
def test_custom_parser_rejects_bad_patterns(patterns: list[str]) -> None:
    with pytest.raises(ConfigError):
        CustomParser(patterns)
