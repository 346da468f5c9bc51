"""jsonlog: every line is one JSON object with the fixed head and the context fields."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

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
