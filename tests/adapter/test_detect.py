"""Auto-detection picks the right parser for each format, line by line."""

from __future__ import annotations

import pytest

from adapter.detect import detect_parse
from adapter.parsers import ParseContext
from adapter.timestamps import TimestampParser

CASES = [
    ('{"level":"info","msg":"hi"}', "json", False),
    ("{not json", "plain", True),
    ("time=2024-01-02T03:04:05Z level=info msg=hi", "logfmt", False),
    (
        '127.0.0.1 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8"',
        "access",
        False,
    ),
    ('::1 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 200 5', "access", False),
    ('fe80::1 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 200 5', "access", False),
    ("<13>Jan  2 03:04:05 host app[1]: hi", "syslog", False),
    ("<13>garbage", "plain", True),
    ("Jan  2 03:04:05 host app[1]: hi", "syslog", False),
    ("<14>1 2024-01-02T03:04:05Z host app - - - hi", "syslog", False),
    ("1 2024-01-02T03:04:05Z host app - - - hi", "syslog", False),
    ("I0102 03:04:05.000000 1 main.go:1] hi", "klog", False),
    ("INFO:root:hi", "python", False),
    ("2024-01-02 03:04:05,123 - app - INFO - hi", "python", False),
    ("2024-01-02 03:04:05,123 INFO app: hi", "python", False),
    ("2024-01-02 03:04:05.123 [main] INFO com.x.App - hi", "java", False),
    ("2024-01-02 03:04:05.123 UTC [77] LOG:  ready", "plain", False),
    ("2024-01-02T03:04:05Z whatever", "plain", False),
    ("[2024-01-02 03:04:05] local.ERROR: boom", "plain", False),
    ("hello world", "plain", False),
    ("Information wants to be free = true", "plain", False),
    ("   indented", "plain", False),
    ("", "plain", False),
]


@pytest.mark.parametrize(("line", "fmt", "failed"), CASES)
def test_detect(line: str, fmt: str, failed: bool) -> None:
    ctx = ParseContext(timestamps=TimestampParser(), wall=1_767_225_600.0)
    got_fmt, partial, got_failed = detect_parse(line, ctx)
    assert (got_fmt, got_failed) == (fmt, failed)
    assert isinstance(partial, dict)


def test_detect_same_result_as_fixed_format() -> None:
    from adapter.parsers import FORMATS

    ctx = ParseContext(timestamps=TimestampParser(), wall=1_767_225_600.0)
    for line, fmt, failed in CASES:
        if failed or fmt == "plain":
            continue
        _, partial, _ = detect_parse(line, ctx)
        assert partial == FORMATS[fmt](line, ctx), line
