"""What every parser shares: the parse context, the partial record, and the field map.

A parser turns one decoded line into a *partial record*: a flat dict whose keys
are ECS dotted names (``"log.level"``, ``"http.response.status_code"``), plus
``"@timestamp"`` as integer nanoseconds, ``"labels"`` for fields with no ECS
home, and the raw level as written (normalised later, in one place). The schema
module turns that into the nested ECS or OpenTelemetry document. Keeping the
parsers flat and schema-free makes each one a small table-testable function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter.timestamps import TimestampParser

Partial = dict[str, Any]


@dataclass(slots=True)
class ParseContext:
    """Per-pipeline state a parser may read: the timestamp parser and the time of the line.

    ``wall`` (epoch seconds the line was read) is needed for year-less timestamps.
    ``secret_keys`` are structured keys whose values are redacted (empty: no redaction).
    """

    timestamps: TimestampParser = field(default_factory=TimestampParser)
    wall: float = 0.0
    secret_keys: frozenset[str] = frozenset()
    routes: dict[str, str] = field(
        default_factory=dict
    )  # structured key -> target, see from_mapping


Parser = Callable[[str, ParseContext], "Partial | None"]

REDACTED = "[REDACTED]"

# Structured keys (JSON, logfmt, custom regex groups) -> where they go. Aliases of one target are
# listed most-preferred first; a second alias of a target already filled goes to labels.
_TIME = "@timestamp"
_LEVEL = "log.level"
FIELD_MAP: dict[str, str] = {
    "@timestamp": _TIME,
    "timestamp": _TIME,
    "time": _TIME,
    "ts": _TIME,
    "t": _TIME,
    "date": _TIME,
    "datetime": _TIME,
    "asctime": _TIME,
    "log.level": _LEVEL,
    "level": _LEVEL,
    "lvl": _LEVEL,
    "severity": _LEVEL,
    "levelname": _LEVEL,
    "loglevel": _LEVEL,
    "level_name": _LEVEL,
    "severity_text": _LEVEL,
    "message": "message",
    "msg": "message",
    "log": "message",
    "text": "message",
    "event": "message",  # structlog
    "log.logger": "log.logger",
    "logger": "log.logger",
    "logger_name": "log.logger",
    "loggerName": "log.logger",
    "name": "log.logger",
    "caller": "log.origin.file.name",
    "origin_file": "log.origin.file.name",
    "filename": "log.origin.file.name",
    "origin_line": "log.origin.file.line",
    "lineno": "log.origin.file.line",
    "origin_function": "log.origin.function",
    "funcName": "log.origin.function",
    "process.pid": "process.pid",
    "pid": "process.pid",
    "process": "process.pid",
    "process.thread.name": "process.thread.name",
    "thread": "process.thread.name",
    "thread_name": "process.thread.name",
    "threadName": "process.thread.name",
    "host.name": "host.name",
    "hostname": "host.name",
    "host": "host.name",
    "service.name": "service.name",
    "service": "service.name",
    "service_name": "service.name",
    "service.version": "service.version",
    "version": "service.version",
    "service.environment": "service.environment",
    "env": "service.environment",
    "environment": "service.environment",
    "http.request.method": "http.request.method",
    "method": "http.request.method",
    "url.path": "url.path",
    "path": "url.path",
    "url.original": "url.original",
    "url": "url.original",
    "uri": "url.original",
    "http.response.status_code": "http.response.status_code",
    "status": "http.response.status_code",
    "status_code": "http.response.status_code",
    "source.ip": "source.ip",
    "remote_addr": "source.ip",
    "client_ip": "source.ip",
    "ip": "source.ip",
    "user_agent.original": "user_agent.original",
    "user_agent": "user_agent.original",
    "http_user_agent": "user_agent.original",
    "error.type": "error.type",
    "error.message": "error.message",
    "error": "error.message",
    "err": "error.message",
    "error.stack_trace": "error.stack_trace",
    "exc_info": "error.stack_trace",
    "stack_trace": "error.stack_trace",
    "stacktrace": "error.stack_trace",
    "stack": "error.stack_trace",
    "exception": "error.stack_trace",
    "trace.id": "trace.id",
    "trace_id": "trace.id",
    "traceId": "trace.id",
    "traceid": "trace.id",
    "dd.trace_id": "trace.id",
    "span.id": "span.id",
    "span_id": "span.id",
    "spanId": "span.id",
    "spanid": "span.id",
    "dd.span_id": "span.id",
    "traceparent": "traceparent",
}
# Targets whose value must be a string / an integer in the output.
_INT_TARGETS = frozenset({"process.pid", "http.response.status_code", "log.origin.file.line"})
_STR_TARGETS = frozenset(
    {
        "message",
        "log.logger",
        "process.thread.name",
        "host.name",
        "service.name",
        "service.version",
        "service.environment",
        "http.request.method",
        "url.path",
        "url.original",
        "source.ip",
        "user_agent.original",
        "error.type",
        "error.message",
        "error.stack_trace",
        "trace.id",
        "span.id",
        "traceparent",
        "log.origin.file.name",
        "log.origin.function",
    }
)
# ECS objects an already-ECS JSON line nests (``{"log": {"level": "info"}}``): flattened one level.
_ECS_ROOTS = frozenset(
    {
        "log",
        "process",
        "host",
        "service",
        "http",
        "url",
        "error",
        "trace",
        "span",
        "user_agent",
        "source",
    }
)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return str(value)


_SECRET = "\x00secret"
_LABEL = "\x00label"
_NESTED = "\x00nested"
_ROUTES_MAX = 8192


def _route(key: str, ctx: ParseContext) -> str:
    """Where a structured key goes; cached per context (keys repeat on every line)."""
    if ctx.secret_keys and key.lower() in ctx.secret_keys:
        route = _SECRET
    elif key in _ECS_ROOTS:
        route = _NESTED
    else:
        route = FIELD_MAP.get(key, _LABEL)
    if len(ctx.routes) < _ROUTES_MAX:
        ctx.routes[key] = route
    return route


def from_mapping(obj: Mapping[str, Any], ctx: ParseContext) -> Partial:
    """A partial record from a structured object's fields (JSON lines, logfmt, regex groups)."""
    out: Partial = {}
    labels: dict[str, Any] = {}
    routes = ctx.routes
    for key, value in obj.items():
        target = routes.get(key)
        if target is None:
            target = _route(key, ctx)
        if target is _LABEL:
            labels[key] = value
        elif type(value) is str and target is _TIME and _TIME not in out:
            # The common cases of _assign, without the call (same outcome).
            ns = ctx.timestamps.parse_value(value, ctx.wall)
            if ns is None:
                labels[key] = value
            else:
                out[_TIME] = ns
        elif target is _LEVEL and type(value) is str and _LEVEL not in out:
            out[_LEVEL] = value
        elif type(value) is int and target in _INT_TARGETS and target not in out:
            out[target] = value
        elif target is _SECRET:
            labels[key] = REDACTED
        elif target is _NESTED:
            if isinstance(value, dict):
                _nested(key, value, out, labels, ctx)
            else:
                target = FIELD_MAP.get(key, _LABEL)
                if target is _LABEL or target in out or not _assign(out, target, value, ctx):
                    labels[key] = value
        elif target in out:
            labels[key] = value
        elif type(value) is str and target in _STR_TARGETS:
            out[target] = value  # the common case, without a call
        elif not _assign(out, target, value, ctx):
            labels[key] = value
    if labels:
        out["labels"] = labels
    return out


def _nested(
    root: str, value: dict[str, Any], out: Partial, labels: dict[str, Any], ctx: ParseContext
) -> None:
    for sub, subvalue in value.items():
        dotted = f"{root}.{sub}"
        target = FIELD_MAP.get(dotted)
        if target is None or target in out or not _assign(out, target, subvalue, ctx):
            labels[dotted] = subvalue


def _assign(out: Partial, target: str, value: Any, ctx: ParseContext) -> bool:
    """Store ``value`` at ``target`` when it has the right shape; False sends it to labels."""
    if value is None:
        return False
    if target == _TIME:
        ns = ctx.timestamps.parse_value(value, ctx.wall)
        if ns is None:
            return False
        out[_TIME] = ns
        return True
    if target == _LEVEL:
        if isinstance(value, dict | list | bool):
            return False
        out[_LEVEL] = value
        return True
    if target in _INT_TARGETS:
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            out[target] = value
            return True
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
            out[target] = int(value)
            return True
        return False
    if target in _STR_TARGETS:
        if target == "message":
            out[target] = _text(value)
            return True
        if isinstance(value, dict | list):
            return False
        out[target] = value if isinstance(value, str) else _text(value)
        return True
    out[target] = value
    return True


def from_groups(groups: dict[str, str | None], ctx: ParseContext) -> Partial:
    """A partial record from a regex match's named groups (``None`` groups skipped).

    Group names are structured keys (``level``, ``msg``, ``logger``, ``thread``, ``pid``,
    ``origin_file``...); a double underscore stands for a dot (``http__request__method``).
    Surrounding blanks of a padded field (``%-5level``, ``[   main]``) are stripped.
    """
    clean: dict[str, str] = {}
    for key, value in groups.items():
        if value is None:
            continue
        if "__" in key:
            key = key.replace("__", ".")
        clean[key] = value if key in ("msg", "message") else value.strip()
    return from_mapping(clean, ctx)


def match_after_timestamp(
    patterns: Iterable[re.Pattern[str]], text: str, end: int, ns: int, ctx: ParseContext
) -> Partial | None:
    """The first of ``patterns`` matching ``text`` after a leading timestamp ending at ``end``.

    Python's and Java's logging layouts share this shape: a timestamp, then one of
    a few fixed layouts of level, logger and message.
    """
    for pattern in patterns:
        m = pattern.match(text, end)
        if m is not None:
            out = from_groups(m.groupdict(), ctx)
            out["@timestamp"] = ns
            return out
    return None
