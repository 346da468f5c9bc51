"""Timestamps and levels: the layouts, zones, formatting, and the OTel severity table."""

from __future__ import annotations

import pytest

from adapter.levels import LEVELS, normalise, severity_number
from adapter.timestamps import TimestampParser, format_rfc3339, load_zone, wall_ns
from sidecar_common.errors import ConfigError


def iso(text: str) -> int:
    found = TimestampParser().parse_iso(text)
    assert found is not None
    return found[0]


WALL = iso("2025-06-15T12:00:00Z") / 1e9


@pytest.mark.parametrize(
    ("text", "zone", "expected", "end"),
    [
        ("2024-01-02T03:04:05Z rest", "UTC", "2024-01-02T03:04:05.000Z", 20),
        ("2024-01-02T03:04:05.5+05:30", "UTC", "2024-01-01T21:34:05.500Z", 27),
        ("2024-01-02 03:04:05,123456 x", "UTC", "2024-01-02T03:04:05.123456Z", 26),
        ("2024-07-02 03:04:05 x", "Europe/Berlin", "2024-07-02T01:04:05.000Z", 19),  # CEST
        ("2024-01-02 03:04:05 x", "Europe/Berlin", "2024-01-02T02:04:05.000Z", 19),  # CET
        ("2024/01/02 03:04:05.000001 x", "UTC", "2024-01-02T03:04:05.000001Z", 26),
        ("[2024-01-02T03:04:05Z] x", "UTC", "2024-01-02T03:04:05.000Z", 22),
        ("Jun 14 10:00:00 x", "UTC", "2025-06-14T10:00:00.000Z", 15),
        ("Jun 14 10:00:00 2021 x", "UTC", "2021-06-14T10:00:00.000Z", 20),
        ("1718445600 x", "UTC", "2024-06-15T10:00:00.000Z", 10),
        ("1718445600.25 x", "UTC", "2024-06-15T10:00:00.250Z", 13),
        ("1718445600123 x", "UTC", "2024-06-15T10:00:00.123Z", 13),
        ("10:11:12.013 x", "UTC", "2025-06-15T10:11:12.013Z", 12),
        ("2024-01-02T03:04:05.123456789Z", "UTC", "2024-01-02T03:04:05.123456789Z", 30),
    ],
)
def test_parse_leading(text: str, zone: str, expected: str, end: int) -> None:
    found = TimestampParser(zone).parse_leading(text, WALL)
    assert found is not None
    assert (format_rfc3339(found[0]), found[1]) == (expected, end)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "2024-13-02T03:04:05Z",
        "2024-02-30 00:00:00",
        "12345 x",
        "99/99/99 99:99:99",
        "Foo 14 10:00:00 x",
        "[2024-01-02T03:04:05Z x",
    ],
)
def test_parse_leading_rejects(text: str) -> None:
    assert TimestampParser().parse_leading(text, WALL) is None


def test_dst_gap_and_fold_do_not_raise() -> None:
    p = TimestampParser("Europe/Berlin")
    # 02:30 on the spring-forward day does not exist, 02:30 on the fall-back day exists twice.
    assert p.parse_leading("2024-03-31 02:30:00 x", WALL) is not None
    assert p.parse_leading("2024-10-27 02:30:00 x", WALL) is not None


def test_parse_value_numbers_by_magnitude() -> None:
    p = TimestampParser()
    want = iso("2024-01-02T03:04:05Z")
    assert p.parse_value(1704164645, WALL) == want
    assert p.parse_value(1704164645000, WALL) == want
    assert p.parse_value(1704164645000000, WALL) == want
    assert p.parse_value(1704164645000000000, WALL) == want
    assert p.parse_value("1704164645", WALL) == want
    assert p.parse_value(True, WALL) is None
    assert p.parse_value(float("nan"), WALL) is None
    assert p.parse_value(-5, WALL) is None
    assert p.parse_value(10**30, WALL) is None


def test_apache_time() -> None:
    p = TimestampParser("Asia/Tokyo")
    assert p.parse_apache("10/Oct/2000:13:55:36 -0700") == iso("2000-10-10T20:55:36Z")
    assert p.parse_apache("10/Oct/2000:13:55:36") == iso(
        "2000-10-10T04:55:36Z"
    )  # no zone: configured zone
    assert p.parse_apache("10/Foo/2000:13:55:36 -0700") is None
    assert p.parse_apache("garbage") is None


def test_format_rfc3339_precision() -> None:
    assert format_rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert format_rfc3339(1_500_000) == "1970-01-01T00:00:00.001500Z"
    assert format_rfc3339(1) == "1970-01-01T00:00:00.000000001Z"
    assert wall_ns(1.5) == 1_500_000_000


def test_bad_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="timezone"):
        load_zone("Mars/Olympus_Mons")


@pytest.mark.parametrize(
    ("raw", "level", "number"),
    [
        ("TRACE", "trace", 1),
        ("debug", "debug", 5),
        ("D", "debug", 5),
        ("DEBUG2", "debug", 6),
        ("Info", "info", 9),
        ("NOTICE", "info", 10),
        ("LOG", "info", 9),
        ("WARNING", "warn", 13),
        ("W", "warn", 13),
        ("err", "error", 17),
        ("SEVERE", "error", 17),
        ("CRITICAL", "fatal", 21),
        ("FATAL", "fatal", 21),
        ("emerg", "fatal", 23),
        ("PANIC", "fatal", 24),
        (30, "info", 9),  # pino
        (50, "error", 17),
        ("V", "trace", 1),
    ],
)
def test_levels(raw: object, level: str, number: int) -> None:
    assert normalise(raw) == level
    assert severity_number(raw) == number
    assert level in LEVELS


@pytest.mark.parametrize("raw", ["verbose-ish", "", 31, None, True, [1]])
def test_unknown_levels(raw: object) -> None:
    assert normalise(raw) is None
