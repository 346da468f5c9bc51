"""Log levels: whatever the app wrote, normalised to trace, debug, info, warn, error, fatal.

One table maps the level words and numbers we meet to an OpenTelemetry
``SeverityNumber`` (1-24, data model appendix B); the normalised ECS
``log.level`` is the range that number falls in (1-4 trace, 5-8 debug, 9-12
info, 13-16 warn, 17-20 error, 21-24 fatal). So ``--schema ecs`` and
``--schema otel`` can never disagree about how severe a line was, and a finer
source level (NOTICE, DEBUG2, ALERT) keeps its nuance in ``severity_number``.
"""

from __future__ import annotations

LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")

# Lower-cased level word -> SeverityNumber.
SEVERITY: dict[str, int] = {
    # trace range
    "trace": 1,
    "trc": 1,
    "finest": 1,
    "verbose": 1,
    "v": 1,
    "finer": 2,
    "debug5": 2,
    "debug4": 3,
    "debug3": 4,
    # debug range
    "debug": 5,
    "dbg": 5,
    "d": 5,
    "fine": 5,
    "debug1": 5,
    "debug2": 6,
    "config": 7,
    # info range
    "info": 9,
    "inf": 9,
    "i": 9,
    "information": 9,
    "informational": 9,
    "log": 9,  # PostgreSQL's LOG
    "notice": 10,
    "note": 10,
    "n": 10,
    # warn range
    "warn": 13,
    "warning": 13,
    "wrn": 13,
    "w": 13,
    # error range
    "error": 17,
    "err": 17,
    "eror": 17,  # logrus's 4-letter level
    "e": 17,
    "severe": 17,
    # fatal range
    "critical": 21,
    "crit": 21,
    "c": 21,
    "fatal": 21,
    "f": 21,
    "alert": 22,
    "a": 22,
    "emerg": 23,
    "emergency": 23,
    "panic": 24,
    "dpanic": 21,
}

# Numeric levels in JSON logs: pino/bunyan use 10..60.
_NUMERIC: dict[int, int] = {10: 1, 20: 5, 30: 9, 40: 13, 50: 17, 60: 21}

# RFC 5424 severity code -> SeverityNumber.
SYSLOG_SEVERITY: tuple[int, ...] = (23, 22, 21, 17, 13, 10, 9, 5)
SYSLOG_NAMES: tuple[str, ...] = (
    "emerg",
    "alert",
    "crit",
    "err",
    "warning",
    "notice",
    "info",
    "debug",
)

_cache: dict[object, int | None] = {}


def severity_number(raw: object) -> int | None:
    """OTel SeverityNumber of a raw level (word, letter or number), None when unknown."""
    try:
        return _cache[raw]
    except (KeyError, TypeError):
        pass
    number: int | None = None
    if isinstance(raw, str):
        number = SEVERITY.get(raw.strip().lower())
    elif isinstance(raw, int) and not isinstance(raw, bool):
        number = _NUMERIC.get(raw)
    if isinstance(raw, str | int) and len(_cache) < 1024:
        _cache[raw] = number
    return number


def level_of(number: int) -> str:
    """The normalised level name of a SeverityNumber."""
    return LEVELS[(min(max(number, 1), 24) - 1) // 4]


_normalised: dict[object, str | None] = {}


def normalise(raw: object) -> str | None:
    """trace/debug/info/warn/error/fatal for a raw level, None when it is no level we know."""
    if type(raw) is str:  # a handful of distinct level words: one lookup per record
        try:
            return _normalised[raw]
        except KeyError:
            pass
    number = severity_number(raw)
    level = None if number is None else level_of(number)
    if type(raw) is str and len(_normalised) < 1024:
        _normalised[raw] = level
    return level


def severity_text(raw: object) -> str:
    """OTel ``severity_text``: the level as the source wrote it."""
    return raw if isinstance(raw, str) else str(raw)
