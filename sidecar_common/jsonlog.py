"""The sidecars' own logs: one JSON object per line on stderr.

A sidecar's logs are read by machines first (the cluster's log pipeline) and
by people second (``kubectl logs | jq``), so every line is one self-contained
JSON object with a fixed head::

    {"time": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "ambassador.proxy",
     "message": "upstream selected", "upstream": "10.0.0.7:5432"}

``time`` is RFC 3339 in UTC with milliseconds and ``Z``; ``level`` is lowercase;
context fields come from ``extra=`` (or ``log_event(**fields)``). An exception
adds ``error.type``, ``error.message`` and ``error.stack_trace`` (ECS names,
flat keys). Serialisation is python-json-logger's.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .errors import ConfigError

try:  # python-json-logger >= 3
    from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter
except ImportError:  # pragma: no cover - python-json-logger 2.x
    from pythonjsonlogger.jsonlogger import (  # type: ignore[attr-defined]
        JsonFormatter as _BaseJsonFormatter,
    )

__all__ = ["LEVELS", "JsonFormatter", "get_logger", "log_event", "setup_logging"]

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


def _rfc3339(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(_BaseJsonFormatter):
    """python-json-logger's formatter with our fixed head and ECS error fields."""

    def add_fields(
        self,
        log_record: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_record["time"] = _rfc3339(record.created)
        log_record["level"] = record.levelname.lower()
        log_record["logger"] = record.name
        log_record["message"] = record.message
        context: dict[str, Any] = {
            key: value
            for key, value in vars(record).items()
            if key not in _RECORD_ATTRS and not key.startswith("_")
        }
        context.update(getattr(record, _FIELDS_ATTR, {}))
        context.update(
            (k, v) for k, v in message_dict.items() if k not in ("exc_info", "stack_info")
        )
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
    if logger.isEnabledFor(level):
        logger.log(level, message, exc_info=exc_info, extra={_FIELDS_ATTR: fields}, stacklevel=2)
