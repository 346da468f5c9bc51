"""Table-driven tests of the text parsers: syslog, Python, Java, klog and plain text."""

from __future__ import annotations

from typing import Any

import pytest

from adapter.parsers import FORMATS, ParseContext
from adapter.timestamps import TimestampParser

WALL = 1_767_225_600.0 - 86400 * 30  # 2025-12-02T00:00:00Z


def ctx(zone: str = "UTC", wall: float = WALL) -> ParseContext:
    return ParseContext(timestamps=TimestampParser(zone), wall=wall)


def ns(text: str) -> int:
    found = TimestampParser().parse_iso(text)
    assert found is not None
    return found[0]


SYSLOG_CASES: list[tuple[str, dict[str, Any] | None]] = [
    (  # RFC 3164 example, PRI 34 = auth.crit
        "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        {
            "@timestamp": ns("2025-10-11T22:14:15Z"),
            "log.syslog.hostname": "mymachine",
            "host.hostname": "mymachine",
            "log.syslog.appname": "su",
            "process.name": "su",
            "message": "'su root' failed for lonvick on /dev/pts/8",
            "log.syslog.priority": 34,
            "log.syslog.facility.code": 4,
            "log.syslog.severity.code": 2,
            "log.level": "crit",
        },
    ),
    (  # no PRI, no hostname (a /dev/log writer), with pid, single-digit day
        "Nov  3 01:02:03 sshd[4242]: Accepted publickey for root",
        {
            "@timestamp": ns("2025-11-03T01:02:03Z"),
            "log.syslog.appname": "sshd",
            "process.name": "sshd",
            "log.syslog.procid": "4242",
            "process.pid": 4242,
            "message": "Accepted publickey for root",
        },
    ),
    (  # RFC 5424 example with structured data and a BOM
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        '[exampleSDID@32473 iut="3" '
        'eventSource="Application"] \ufeffAn application event log entry...',
        {
            "log.syslog.version": "1",
            "@timestamp": ns("2003-10-11T22:14:15.003Z"),
            "log.syslog.hostname": "mymachine.example.com",
            "host.hostname": "mymachine.example.com",
            "log.syslog.appname": "evntslog",
            "process.name": "evntslog",
            "log.syslog.msgid": "ID47",
            "log.syslog.structured_data": {
                "exampleSDID@32473": {"iut": "3", "eventSource": "Application"}
            },
            "message": "An application event log entry...",
            "log.syslog.priority": 165,
            "log.syslog.facility.code": 20,
            "log.syslog.severity.code": 5,
            "log.level": "notice",
        },
    ),
    (  # RFC 5424 without PRI, nil values
        "1 2024-01-02T03:04:05+01:00 - app 77 - - started",
        {
            "log.syslog.version": "1",
            "@timestamp": ns("2024-01-02T02:04:05Z"),
            "log.syslog.appname": "app",
            "process.name": "app",
            "log.syslog.procid": "77",
            "process.pid": 77,
            "message": "started",
        },
    ),
    ("<999>Oct 11 22:14:15 host app: x", None),  # PRI out of range
    ("<13>not syslog at all", None),
]


@pytest.mark.parametrize(("line", "expected"), SYSLOG_CASES)
def test_syslog(line: str, expected: dict[str, Any] | None) -> None:
    assert FORMATS["syslog"](line, ctx()) == expected


@pytest.mark.parametrize(
    ("wall_iso", "line", "expected_iso"),
    [
        # A December line read on 1 January belongs to the old year.
        ("2026-01-01T00:00:05Z", "Dec 31 23:59:58 host app: x", "2025-12-31T23:59:58Z"),
        # A 1 January line read just before midnight by a slightly slow clock: the new year.
        ("2025-12-31T23:59:59Z", "Jan  1 00:00:01 host app: x", "2026-01-01T00:00:01Z"),
        # Months ago in the same year (an old file being tailed).
        ("2025-11-25T12:00:00Z", "Mar  3 10:00:00 host app: x", "2025-03-03T10:00:00Z"),
        # A little in the future (clock skew) stays this year.
        ("2025-06-01T12:00:00Z", "Jun  2 12:00:00 host app: x", "2025-06-02T12:00:00Z"),
        # 29 February read in a non-leap year: the last leap year.
        ("2027-03-01T00:00:00Z", "Feb 29 12:00:00 host app: x", "2024-02-29T12:00:00Z"),
    ],
)
def test_syslog_year_inference_across_new_year(wall_iso: str, line: str, expected_iso: str) -> None:
    out = FORMATS["syslog"](line, ctx(wall=ns(wall_iso) / 1e9))
    assert out is not None
    assert out["@timestamp"] == ns(expected_iso)


def test_syslog_zone_for_bsd_timestamps() -> None:
    out = FORMATS["syslog"](
        "Jul  4 12:00:00 host app: x",
        ctx("America/New_York", wall=ns("2025-07-10T00:00:00Z") / 1e9),
    )
    assert out is not None and out["@timestamp"] == ns("2025-07-04T16:00:00Z")  # EDT is UTC-4


PYTHON_CASES: list[tuple[str, dict[str, Any] | None]] = [
    (
        "WARNING:root:disk almost full",
        {"log.level": "WARNING", "log.logger": "root", "message": "disk almost full"},
    ),
    (
        "ERROR:app.db:query failed: timeout",
        {"log.level": "ERROR", "log.logger": "app.db", "message": "query failed: timeout"},
    ),
    (
        "2024-01-02 03:04:05,123 - app.web - INFO - GET / 200",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.logger": "app.web",
            "log.level": "INFO",
            "message": "GET / 200",
        },
    ),
    (
        "2024-01-02 03:04:05,123 ERROR app.worker: job 7 failed",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.level": "ERROR",
            "log.logger": "app.worker",
            "message": "job 7 failed",
        },
    ),
    (
        "[2024-01-02 03:04:05,123] INFO in views: hello",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.level": "INFO",
            "log.origin.function": "views",
            "message": "hello",
        },
    ),
    (  # gunicorn
        "[2024-01-02 03:04:05 +0000] [4242] [INFO] Booting worker with pid: 4243",
        {
            "@timestamp": ns("2024-01-02T03:04:05Z"),
            "process.pid": 4242,
            "log.level": "INFO",
            "message": "Booting worker with pid: 4243",
        },
    ),
    ("just text", None),
]


@pytest.mark.parametrize(("line", "expected"), PYTHON_CASES)
def test_python(line: str, expected: dict[str, Any] | None) -> None:
    assert FORMATS["python"](line, ctx()) == expected


JAVA_CASES: list[tuple[str, dict[str, Any] | None]] = [
    (  # logback / log4j2 "%d [%t] %-5level %logger - %msg"
        "2024-01-02 03:04:05.123 [main] ERROR com.example.App - boom",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "process.thread.name": "main",
            "log.level": "ERROR",
            "log.logger": "com.example.App",
            "message": "boom",
        },
    ),
    (  # log4j "%d %-5p [%t] %c - %m"
        "2024-01-02 03:04:05,123 INFO  [pool-1-thread-2] org.acme.Worker - job done",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.level": "INFO",
            "process.thread.name": "pool-1-thread-2",
            "log.logger": "org.acme.Worker",
            "message": "job done",
        },
    ),
    (  # Spring Boot 3
        "2024-01-02T03:04:05.123+01:00  INFO 4242 --- [myapp] [           main] "
        "c.e.demo.DemoApplication"
        "                 : Started DemoApplication in 1.5 seconds",
        {
            "@timestamp": ns("2024-01-02T02:04:05.123Z"),
            "log.level": "INFO",
            "process.pid": 4242,
            "process.thread.name": "main",
            "log.logger": "c.e.demo.DemoApplication",
            "message": "Started DemoApplication in 1.5 seconds",
        },
    ),
    (  # JBoss / WildFly
        "2024-01-02 03:04:05,123 WARN  [org.jboss.as.server]"
        " (MSC service thread 1-2) WFLYSRV0059: x",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.level": "WARN",
            "log.logger": "org.jboss.as.server",
            "process.thread.name": "MSC service thread 1-2",
            "message": "WFLYSRV0059: x",
        },
    ),
    ("no timestamp [main] INFO x - y", None),
]


@pytest.mark.parametrize(("line", "expected"), JAVA_CASES)
def test_java(line: str, expected: dict[str, Any] | None) -> None:
    assert FORMATS["java"](line, ctx()) == expected


def test_java_time_only_gets_todays_date_in_the_zone() -> None:
    # logback's default pattern: "%d{HH:mm:ss.SSS} [%thread] %-5level %logger{36} - %msg"
    out = FORMATS["java"](
        "23:30:00.250 [main] DEBUG c.e.App - tick",
        ctx("Europe/Berlin", wall=ns("2025-06-01T20:00:00Z") / 1e9),
    )
    assert out is not None
    assert out["@timestamp"] == ns(
        "2025-06-01T21:30:00.25Z"
    )  # 23:30 CEST on 1 June (22:00 local on the wall)


KLOG_CASES: list[tuple[str, dict[str, Any] | None]] = [
    (
        "I1102 15:04:05.123456   4242 server.go:42] Serving on :8080",
        {
            "@timestamp": ns("2025-11-02T15:04:05.123456Z"),
            "log.level": "info",
            "process.thread.id": 4242,
            "log.origin.file.name": "server.go",
            "log.origin.file.line": 42,
            "message": "Serving on :8080",
        },
    ),
    (  # structured klog
        'E1102 15:04:05.000001       1 controller.go:7] "Reconcile failed"'
        ' err="not found" pod="kube-system/dns"',
        {
            "@timestamp": ns("2025-11-02T15:04:05.000001Z"),
            "log.level": "error",
            "process.thread.id": 1,
            "log.origin.file.name": "controller.go",
            "log.origin.file.line": 7,
            "message": "Reconcile failed",
            "labels": {"err": "not found", "pod": "kube-system/dns"},
        },
    ),
    ("I1102 15:04:05 missing micros] x", None),
]


@pytest.mark.parametrize(("line", "expected"), KLOG_CASES)
def test_klog(line: str, expected: dict[str, Any] | None) -> None:
    assert FORMATS["klog"](line, ctx()) == expected


PLAIN_CASES: list[tuple[str, dict[str, Any]]] = [
    ("2024-01-02T03:04:05Z hello", {"@timestamp": ns("2024-01-02T03:04:05Z"), "message": "hello"}),
    (
        "2024-01-02 03:04:05,123 ERROR something broke",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.level": "ERROR",
            "message": "something broke",
        },
    ),
    (  # PostgreSQL's "%m [%p] %q%u@%d "
        '2024-01-02 03:04:05.123 UTC [4242] postgres@shop ERROR:  relation "x" does not exist',
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "process.pid": 4242,
            "labels": {"session": "postgres@shop"},
            "log.level": "ERROR",
            "message": 'relation "x" does not exist',
        },
    ),
    (
        "2024/01/02 03:04:05 W listener closed",
        {"@timestamp": ns("2024-01-02T03:04:05Z"), "log.level": "W", "message": "listener closed"},
    ),
    (
        "24/01/02 03:04:05 [INFO] started",
        {"@timestamp": ns("2024-01-02T03:04:05Z"), "log.level": "INFO", "message": "started"},
    ),
    (
        "240102 03:04:05 [Note] mysqld ready",
        {"@timestamp": ns("2024-01-02T03:04:05Z"), "message": "[Note] mysqld ready"},
    ),
    (
        "240102 030405 INFO compact",
        {"@timestamp": ns("2024-01-02T03:04:05Z"), "log.level": "INFO", "message": "compact"},
    ),
    ("1704164645 tick", {"@timestamp": ns("2024-01-02T03:04:05Z"), "message": "tick"}),
    (
        "1704164645123 WARN tock",
        {"@timestamp": ns("2024-01-02T03:04:05.123Z"), "log.level": "WARN", "message": "tock"},
    ),
    (
        "02-Jan-2024 03:04:05.123 SEVERE [main] org.apache.catalina.startup.x",
        {
            "@timestamp": ns("2024-01-02T03:04:05.123Z"),
            "log.level": "SEVERE",
            "message": "[main] org.apache.catalina.startup.x",
        },
    ),
    ("[WARN] no timestamp here", {"log.level": "WARN", "message": "no timestamp here"}),
    ("ERROR: could not open file", {"log.level": "ERROR", "message": "could not open file"}),
    ("I am a sentence", {"message": "I am a sentence"}),
    ("Information is power", {"message": "Information is power"}),
    ("", {"message": ""}),
]


@pytest.mark.parametrize(("line", "expected"), PLAIN_CASES)
def test_plain(line: str, expected: dict[str, Any]) -> None:
    assert FORMATS["plain"](line, ctx()) == expected


def test_plain_naive_timestamp_uses_configured_zone() -> None:
    out = FORMATS["plain"]("2024-01-02 03:04:05 hello", ctx("Asia/Tokyo"))
    assert out is not None and out["@timestamp"] == ns("2024-01-01T18:04:05Z")
    explicit = FORMATS["plain"]("2024-01-02T03:04:05Z hello", ctx("Asia/Tokyo"))
    assert explicit is not None and explicit["@timestamp"] == ns("2024-01-02T03:04:05Z")
