"""The sidecars' own logs: one JSON object per line on stderr.

A sidecar's logs are read by machines first (the cluster's log pipeline) and
by people second (``kubectl logs | jq``), so every line is one self-contained
JSON object with a fixed head::

    {"time": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "ambassador.proxy",
     "message": "upstream selected", "upstream": "10.0.0.7:5432"}

``time`` is RFC 3339 in UTC with milliseconds and ``Z``; ``level`` is lowercase;
context fields come from ``extra=`` (or ``log_event(**fields)``). An exception
adds ``error.type``, ``error.message`` and ``error.stack_trace`` (ECS names,
flat keys). Serialisation is python-json-logger's, except on ``log_event``'s
fast path: a line of plain values (str, int, finite float, bool, None; ASCII)
headed for our own handler is serialised straight to the handler's
stream, without a LogRecord or the formatter (a per-request access log paid
60-100 us per line on the record machinery). Other handlers on the way (pytest's
caplog, an app's own) still get a LogRecord, exactly as ``Logger.log`` gives them.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .errors import ConfigError

__all__ = ["LEVELS", "JsonFormatter", "get_logger", "log_event", "rfc3339", "setup_logging"]

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The head of every line; context fields may not overwrite it.
_HEAD = ("time", "level", "logger", "message")
# Attributes every LogRecord has: not context fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# log_event passes its fields under this attribute, so that any name (even
# ``name`` or ``args``, which LogRecord reserves) can be a context field.
_FIELDS_ATTR = "_sidecar_fields"


_second_cache: tuple[int, str] = (-1, "")
_milli_cache: tuple[int, str] = (-1, "")


def rfc3339(created: float) -> str:
    """``created`` (epoch seconds) as our logs' ``time``: RFC 3339, UTC, milliseconds, ``Z``."""
    global _second_cache, _milli_cache
    millis = int(created * 1000)
    cached_milli, text = _milli_cache
    if cached_milli == millis:
        # A busy access log writes many lines per millisecond: the same text.
        return text
    seconds, millis_part = divmod(millis, 1000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        # strftime + gmtime once per second, not once per line.
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    text = f"{prefix}.{millis_part:03d}Z"
    _milli_cache = (millis, text)
    return text


def _add_fields(
    log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
) -> None:
    """Our fixed head, the context fields and the ECS error fields of one record."""
    log_record["time"] = rfc3339(record.created)
    log_record["level"] = record.levelname.lower()
    log_record["logger"] = record.name
    log_record["message"] = record.message
    context: dict[str, Any] = {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRS and not key.startswith("_")
    }
    context.update(getattr(record, _FIELDS_ATTR, {}))
    context.update((k, v) for k, v in message_dict.items() if k not in ("exc_info", "stack_info"))
    for key, value in context.items():
        log_record[f"field.{key}" if key in _HEAD else key] = value
    # exc_info=True outside an except block gives (None, None, None): no error then.
    exc = record.exc_info if isinstance(record.exc_info, tuple) else None
    if exc is not None and exc[0] is not None:
        log_record["error.type"] = exc[0].__name__
        log_record["error.message"] = str(exc[1])
    stack = message_dict.get("exc_info")
    if stack and (exc is None or exc[0] is not None):
        log_record["error.stack_trace"] = stack
    if message_dict.get("stack_info"):
        log_record["stack_info"] = message_dict["stack_info"]


_pjl_class: type[logging.Formatter] | None = None


def _python_json_logger_formatter() -> type[logging.Formatter]:
    """python-json-logger's formatter with our ``add_fields`` (built on first use)."""
    global _pjl_class
    if _pjl_class is None:
        try:  # python-json-logger >= 3
            from pythonjsonlogger.json import JsonFormatter as base
        except ImportError:  # pragma: no cover - python-json-logger 2.x
            from pythonjsonlogger.jsonlogger import (  # type: ignore[attr-defined]
                JsonFormatter as base,
            )

        class _Formatter(base):
            def add_fields(
                self,
                log_record: dict[str, Any],
                record: logging.LogRecord,
                message_dict: dict[str, Any],
            ) -> None:
                _add_fields(log_record, record, message_dict)

        _pjl_class = _Formatter
    return _pjl_class


class JsonFormatter(logging.Formatter):
    """python-json-logger's formatter with our fixed head and ECS error fields.

    python-json-logger (with json and its own helpers) is imported when the first
    record is formatted, not with this module: ``log_event``'s fast path never
    needs it, so a sidecar that only logs plain events never loads it (memory a
    sidecar pays in every pod). The output is python-json-logger's, unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._options = (args, kwargs)
        self._impl: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        impl = self._impl
        if impl is None:
            args, kwargs = self._options
            impl = self._impl = _python_json_logger_formatter()(*args, **kwargs)
        return impl.format(record)


_handler: logging.Handler | None = None


def setup_logging(
    level: str = "info", *, stream: TextIO | None = None, setting: str = "--log-level"
) -> None:
    """Make the root logger write JSON lines to ``stream`` (default: stderr).

    Idempotent: calling it again replaces the handler it installed before
    (tests and the CLI both call it). A bad level is a ``ConfigError`` naming
    ``setting``.
    """
    global _handler
    numeric = LEVELS.get(level.strip().lower()) if isinstance(level, str) else None
    if numeric is None:
        raise ConfigError(setting, level, "one of: debug, info, warning, error, critical")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    logging.captureWarnings(True)


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (dotted, e.g. ``ambassador.proxy``)."""
    return logging.getLogger(name)


def log_event(
    logger: logging.Logger,
    message: str,
    /,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log ``message`` with ``fields`` as context fields of the JSON line.

    Unlike ``extra=``, any field name is allowed; names that collide with the
    head (``time``, ``level``, ``logger``, ``message``) come out as ``field.<name>``.
    """
    if not logger.isEnabledFor(level):
        return
    if exc_info or not _fast_log(logger, level, message, fields):
        logger.log(level, message, exc_info=exc_info, extra={_FIELDS_ATTR: fields}, stacklevel=2)


_PLAIN = (str, int, bool, type(None))

# The fast path's serialiser. A sidecar logs a few lines at start and then little,
# so it starts with the stdlib's C encoder (json is loaded anyway) and switches to
# orjson (10x faster here: 0.3 against 3 us for an access-log line) once it has
# written ORJSON_AFTER lines: a busy logger (the HTTP access log) gets orjson's speed,
# an idle sidecar never loads it (orjson with the datetime and uuid modules it
# imports: 0.6 MiB of idle RSS, measured). Same JSON either way.
ORJSON_AFTER = 1000
_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_fast_lines = 0


def _encode_counting(line: dict[str, Any]) -> str:
    global _fast_lines, _encode
    _fast_lines += 1
    if _fast_lines >= ORJSON_AFTER:
        _encode = _orjson_encoder()
    return _json_encode(line)


def _orjson_encoder() -> Callable[[dict[str, Any]], str]:
    """orjson's dumps as a str, the stdlib's for what orjson refuses (ints over 64 bits)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency
        return _json_encode
    dumps = orjson.dumps

    def encode(line: dict[str, Any]) -> str:
        try:
            return dumps(line).decode()
        except TypeError:  # orjson.JSONEncodeError
            return _json_encode(line)

    return encode


_encode: Callable[[dict[str, Any]], str] = _encode_counting
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _fast_log(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> bool:
    """Write the line without a LogRecord when only plain values go to our handler.

    Returns False (nothing done) when the slow path must run: a filter on a
    logger, a disabled logger, a value python-json-logger would render
    differently (anything but str/int/finite float/bool/None and lists or
    tuples of str/int/bool/None), non-ASCII text
    (python-json-logger escapes it), an unusual level, or our handler not
    installed or not using our formatter. Walks the handlers as
    ``Logger.callHandlers`` does (propagation, handler levels); handlers other
    than ours get a LogRecord built as ``Logger.log`` builds it.
    """
    handler = _handler
    if (
        handler is None
        or logger.disabled
        or level not in _LEVEL_NAMES
        or type(handler.formatter) is not JsonFormatter
        or handler.filters
    ):
        return False
    others: list[logging.Handler] = []
    ours = False
    c: logging.Logger | None = logger
    while c is not None:
        if c.filters:
            return False
        for h in c.handlers:
            if h is handler:
                ours = ours or level >= h.level
            elif level >= h.level:
                others.append(h)
        if not c.propagate:
            break
        c = c.parent
    if not ours:
        return False
    created = time.time()
    line: dict[str, Any] = {
        "time": rfc3339(created),
        "level": _LEVEL_NAMES[level],
        "logger": logger.name,
        "message": message,
    }
    for key, value in fields.items():
        if type(value) is float:
            if not math.isfinite(value):
                return False
        elif type(value) not in _PLAIN and not (
            type(value) in (list, tuple) and all(type(v) in _PLAIN for v in value)
        ):
            return False  # a list or tuple of str/int/bool/None is an array either way
        line[f"field.{key}" if key in _HEAD else key] = value
    text = _encode(line)
    if not text.isascii():
        return False  # we keep UTF-8; python-json-logger writes \uXXXX escapes
    for h in others:
        # As Logger.log would: the caller of log_event is the record's origin.
        fn, lno, func, _sinfo = logger.findCaller(False, 3)
        record = logger.makeRecord(
            logger.name, level, fn, lno, message, (), None, func, {_FIELDS_ATTR: fields}
        )
        record.created = created
        h.handle(record)
    stream = getattr(handler, "stream", None)
    if stream is None:
        return False
    handler.acquire()
    try:
        stream.write(text + "\n")
        stream.flush()
    except Exception:
        handler.handleError(logger.makeRecord(logger.name, level, "", 0, message, (), None))
    finally:
        handler.release()
    return True
