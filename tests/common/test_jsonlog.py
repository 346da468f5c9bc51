"""jsonlog: every line is one JSON object with the fixed head and the context fields."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_common import jsonlog
from sidecar_common.errors import ConfigError
from sidecar_common.jsonlog import JsonFormatter, get_logger, log_event, setup_logging
from sidecar_common.netaddr import HostPort

RFC3339_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Root logging into a StringIO; restores the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("debug", stream=buf)
    yield buf
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    text = buf.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_head_fields_and_rfc3339_time(stream: io.StringIO) -> None:
    before = datetime.now(UTC)
    get_logger("ambassador.proxy").info("upstream selected")
    after = datetime.now(UTC)
    [line] = lines(stream)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["level"] == "info"
    assert line["logger"] == "ambassador.proxy"
    assert line["message"] == "upstream selected"
    assert RFC3339_MS_Z.match(line["time"]), line["time"]
    stamp = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert before - timedelta(milliseconds=1) <= stamp <= after


@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800_000), min_size=1, max_size=6))
def test_rfc3339_is_the_utc_millisecond_of_any_time_in_any_order(millis: list[int]) -> None:
    # Cached per second and per millisecond: the order of calls must not matter.
    for ms in [*millis, *reversed(millis)]:
        for offset in (0.1, 0.9):  # anywhere inside the millisecond
            want = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            assert jsonlog.rfc3339((ms + offset) / 1000) == f"{want}.{ms % 1000:03d}Z"


def test_extra_and_log_event_context_fields(stream: io.StringIO) -> None:
    log = get_logger("adapter.tail")
    log.warning("lines dropped %d", 3, extra={"path": "/var/log/app.log", "dropped": 3})
    log_event(
        log,
        "connected",
        level=logging.DEBUG,
        upstream=HostPort("10.0.0.7", 5432),
        state_dir=Path("/x"),
        tags=["a", "b"],
        name="taken from LogRecord's reserved names",
        message="collides with the head",
    )
    first, second = lines(stream)
    assert first["message"] == "lines dropped 3"
    assert first["level"] == "warning"
    assert (first["path"], first["dropped"]) == ("/var/log/app.log", 3)
    assert second["level"] == "debug"
    assert second["message"] == "connected"
    assert second["upstream"] == {"host": "10.0.0.7", "port": 5432}
    assert second["state_dir"] == "/x"
    assert second["tags"] == ["a", "b"]
    assert second["name"] == "taken from LogRecord's reserved names"
    assert second["field.message"] == "collides with the head"


def test_exception_fields(stream: io.StringIO) -> None:
    log = get_logger("watcher.hook")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("webhook failed", extra={"url": "http://127.0.0.1:1/"})
    [line] = lines(stream)
    assert line["level"] == "error"
    assert line["error.type"] == "ValueError"
    assert line["error.message"] == "bad\nthing"
    assert line["error.stack_trace"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad" in line["error.stack_trace"]
    assert line["url"] == "http://127.0.0.1:1/"


def test_multiline_messages_stay_one_line(stream: io.StringIO) -> None:
    get_logger("x").info("first\nsecond\r\nthird \u2603")
    assert stream.getvalue().count("\n") == 1
    assert lines(stream)[0]["message"] == "first\nsecond\r\nthird \u2603"


def test_level_filtering(stream: io.StringIO) -> None:
    setup_logging("WARNING", stream=stream)
    log = get_logger("x")
    log.info("hidden")
    log_event(log, "hidden too")
    log.warning("shown")
    log_event(log, "shown too", level=logging.ERROR, code=7)
    got = lines(stream)
    assert [(line["level"], line["message"]) for line in got] == [
        ("warning", "shown"),
        ("error", "shown too"),
    ]
    assert got[1]["code"] == 7


def test_setup_is_idempotent(stream: io.StringIO) -> None:
    setup_logging("info", stream=stream)
    setup_logging("info", stream=stream)
    get_logger("x").info("once")
    assert len(lines(stream)) == 1


@pytest.mark.parametrize("bad", ["verbose", "", "trace", "10"])
def test_bad_level_is_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        setup_logging(bad, stream=io.StringIO(), setting="ADAPTER_LOG_LEVEL")
    assert info.value.setting == "ADAPTER_LOG_LEVEL"
    assert info.value.value == bad
    assert "debug, info, warning, error, critical" in info.value.expected


@pytest.mark.parametrize(
    ("created", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1700000000.9999, "2023-11-14T22:13:20.999Z"),
        (1700000000.5, "2023-11-14T22:13:20.500Z"),
    ],
)
def test_time_format_is_utc_with_milliseconds(created: float, text: str) -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    record.created = created
    assert json.loads(JsonFormatter().format(record))["time"] == text


def test_exc_info_outside_an_except_block_adds_no_error_fields(stream: io.StringIO) -> None:
    get_logger("x").error("no exception here", exc_info=True)
    [line] = lines(stream)
    assert not [key for key in line if key.startswith("error.")]


def test_log_event_with_exc_info(stream: io.StringIO) -> None:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except OSError:
        log_event(get_logger("ambassador.pool"), "connect failed", exc_info=True, attempt=2)
    [line] = lines(stream)
    assert (line["error.type"], line["attempt"]) == ("ConnectionRefusedError", 2)
    assert "Connection refused" in line["error.message"]
    assert "ConnectionRefusedError" in line["error.stack_trace"]


# --------------------------------------------------------------------------- log_event's fast path


@pytest.fixture
def format_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Messages our formatter formatted (the slow path); the fast path bypasses it."""
    calls: list[str] = []
    original = JsonFormatter.format

    def spy(self: JsonFormatter, record: logging.LogRecord) -> str:
        calls.append(record.getMessage())
        return original(self, record)

    monkeypatch.setattr(JsonFormatter, "format", spy)
    return calls


ACCESS_FIELDS: dict[str, Any] = {
    "listener": "api",
    "env": "prod",
    "method": "GET",
    "path": "/v1/x?y=1",
    "status": 200,
    "duration": 0.000731,
    "bytes_in": 0,
    "upstream": "10.0.0.7:8080",
    "ok": True,
    "nothing": None,
    "environments": ["dev", "prod"],  # lists and tuples of plain values: arrays
    "ports": (5432, 6379, None, True),
    "message": "collides with the head",
    "reason": 'quote " backslash \\ newline \n tab \t ctl \x01',
}


def test_fast_path_line_equals_the_formatters(stream: io.StringIO, format_calls: list[str]) -> None:
    log = get_logger("ambassador.access")
    log_event(log, "request", **ACCESS_FIELDS)
    assert format_calls == []  # the fast path wrote it
    [fast] = lines(stream)
    # The same event through the record machinery and our formatter.
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "request", (), None)
    record._sidecar_fields = ACCESS_FIELDS
    # Half a millisecond in: the float round trip must not fall to the previous one.
    stamp = datetime.fromisoformat(fast["time"].replace("Z", "+00:00")).timestamp()
    record.created = stamp + 0.0005
    slow = json.loads(JsonFormatter().format(record))
    assert fast == slow
    assert list(fast) == list(slow)  # same key order: the head first
    assert fast["field.message"] == "collides with the head"
    assert RFC3339_MS_Z.match(fast["time"])


@pytest.mark.parametrize(
    "value",
    [
        Path("/x"),
        HostPort("10.0.0.7", 5432),
        [["a"]],
        [1.5],
        {"a": 1},
        b"raw",
        float("nan"),
        "snow \u2603",
        ["snow \u2603"],
    ],
)
def test_values_the_fast_path_would_render_differently_take_the_slow_path(
    stream: io.StringIO, format_calls: list[str], value: object
) -> None:
    log_event(get_logger("ambassador.access"), "request", value=value)
    assert format_calls == ["request"]
    [line] = lines(stream)
    assert line["message"] == "request" and "value" in line
    assert stream.getvalue().isascii()  # non-ASCII is escaped, as before


def test_fast_path_still_feeds_other_handlers_a_record(
    stream: io.StringIO, format_calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ambassador.access")
    log_event(get_logger("ambassador.access"), "request", status=204)
    assert format_calls == []
    [record] = [r for r in caplog.records if r.name == "ambassador.access"]
    assert record.getMessage() == "request"
    assert record.levelno == logging.INFO
    # The record names log_event's caller, as logger.log(stacklevel=2) did.
    assert record.funcName == "test_fast_path_still_feeds_other_handlers_a_record"
    assert record._sidecar_fields == {"status": 204}  # type: ignore[attr-defined]
    assert lines(stream)[0]["status"] == 204


def test_fast_path_keeps_filters_levels_and_propagation(
    stream: io.StringIO, format_calls: list[str]
) -> None:
    log = get_logger("jsonlog.test.filtered")
    log.addFilter(lambda record: getattr(record, "_sidecar_fields", {}).get("keep", True))
    try:
        log_event(log, "dropped by the filter", keep=False)
        log_event(log, "kept by the filter", keep=True)
    finally:
        log.filters.clear()
    assert [line["message"] for line in lines(stream)] == ["kept by the filter"]
    root_handler = jsonlog._handler
    assert root_handler is not None
    root_handler.setLevel(logging.ERROR)
    try:
        log_event(get_logger("jsonlog.test"), "below the handler's level", level=logging.INFO)
        log_event(get_logger("jsonlog.test"), "at it", level=logging.ERROR)
    finally:
        root_handler.setLevel(logging.NOTSET)
    quiet = get_logger("jsonlog.test.quiet")
    quiet.propagate = False
    try:
        log_event(quiet, "goes nowhere")
    finally:
        quiet.propagate = True
    assert [line["message"] for line in lines(stream)] == ["kept by the filter", "at it"]


def test_python_json_logger_is_imported_only_when_a_record_is_formatted() -> None:
    """The fast path never loads python-json-logger (idle memory of every sidecar);
    the first record that needs the formatter loads it, and the line is the same."""
    code = """
import io, json, logging, sys
from sidecar_common.jsonlog import get_logger, log_event, setup_logging
buf = io.StringIO()
setup_logging("info", stream=buf)
log = get_logger("ambassador")
log_event(log, "listening", port=5432, listener="pg")
before = "pythonjsonlogger" in sys.modules
log.info("plain record", extra={"port": 5432})
after = "pythonjsonlogger" in sys.modules
fast, slow = (json.loads(line) for line in buf.getvalue().splitlines())
print(json.dumps([before, after, fast["port"], slow["port"], sorted(slow)]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    before, after, fast_port, slow_port, keys = json.loads(res.stdout)
    assert (before, after) == (False, True)
    assert fast_port == slow_port == 5432
    assert keys == ["level", "logger", "message", "port", "time"]


def test_a_busy_logger_switches_to_orjson_with_the_same_lines(
    stream: io.StringIO, format_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path starts on the stdlib encoder and takes orjson after ORJSON_AFTER
    lines; every line parses the same, and a value orjson refuses still gets written."""
    monkeypatch.setattr(jsonlog, "ORJSON_AFTER", 3)
    monkeypatch.setattr(jsonlog, "_fast_lines", 0)
    monkeypatch.setattr(jsonlog, "_encode", jsonlog._encode_counting)
    log = get_logger("ambassador.access")
    for _ in range(5):
        log_event(log, "request", **ACCESS_FIELDS)
    assert jsonlog._encode is not jsonlog._encode_counting  # switched
    log_event(log, "request", big=2**70)  # over 64 bits: orjson refuses, json writes it
    assert format_calls == []  # all six on the fast path
    out = lines(stream)
    assert len(out) == 6 and out[0] == {**out[4], "time": out[0]["time"]}
    assert out[5]["big"] == 2**70
