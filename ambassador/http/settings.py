"""Settings of an HTTP listener (the ``[listeners.http]`` table), validated with key paths.

The shell's config loader calls ``parse_http_settings(table, "listeners[0].http")``
and stores the frozen result; every error is a ``ConfigError`` naming the key
the way the user wrote it.
"""

from __future__ import annotations

import os
import re
import select
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar_common.errors import ConfigError
from sidecar_common.settings import parse_duration

__all__ = ["HttpSettings", "RetrySettings", "lane_enabled", "parse_http_settings"]

#: RFC 9110 token characters: what a header field name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class RetrySettings:
    """Retries of one request, bounded per request and by a budget across requests.

    The budget (linkerd's, and Finagle's ``RetryBudget``): over the last
    ``budget_window`` seconds, retries may add ``budget_ratio`` of the requests
    plus ``budget_min_per_second`` per second, so a failing upstream sees at most
    ~20% more load, never a retry storm.
    """

    max_retries: int = 2
    budget_ratio: float = 0.2
    budget_min_per_second: float = 10.0
    budget_window: float = 10.0
    backoff_initial: float = 0.025
    backoff_max: float = 0.25
    #: Response statuses retried (idempotent methods only).
    on_status: tuple[int, ...] = (502, 503, 504)
    #: Request body bytes kept so a request with a body can be replayed on retry.
    replay_buffer: int = 65536


@dataclass(frozen=True)
class HttpSettings:
    """How an HTTP listener treats requests.

    ``request_timeout`` bounds the wait for the upstream's response head and
    any silence while a body streams (504 when the head did not come in time).
    ``upstream_host`` replaces the Host header (None: the client's is kept).
    ``inject_headers`` sets each named header to the stripped content of a
    file, re-read when the file changes (a mounted Secret).
    """

    request_timeout: float = 30.0
    upstream_host: str | None = None
    inject_headers: tuple[tuple[str, Path], ...] = ()
    request_id_header: str = "x-request-id"
    max_header_bytes: int = 16384
    keepalive_timeout: float = 60.0
    pool_max_idle: int = 64
    pool_idle_timeout: float = 30.0
    retry: RetrySettings = field(default_factory=RetrySettings)


_KEYS = (
    "request_timeout",
    "upstream_host",
    "inject_headers",
    "request_id_header",
    "max_header_bytes",
    "keepalive_timeout",
    "pool_max_idle",
    "pool_idle_timeout",
    "retry",
)
_RETRY_KEYS = (
    "max_retries",
    "budget_ratio",
    "budget_min_per_second",
    "budget_window",
    "backoff_initial",
    "backoff_max",
    "on_status",
    "replay_buffer",
)


def _norm(value: object, path: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "a table")
    table = {str(k).replace("-", "_"): v for k, v in value.items()}
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}.{key}", table[key], f"a known key ({', '.join(known)})")
    return table


def _duration(value: object, path: str) -> float:
    expected = "a positive duration like 2s, 250ms or 1.5 (seconds)"
    if isinstance(value, bool):
        raise ConfigError(path, value, expected)
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    except (ConfigError, ValueError):
        raise ConfigError(path, value, expected) from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(path, value, expected)
    return seconds


def _int(value: object, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(path, value, f"an integer between {lo} and {hi}")
    return value


def _number(value: object, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(path, value, f"a number between {lo} and {hi}")
    return float(value)


def _retry(value: object, path: str) -> RetrySettings:
    table = _norm(value, path, _RETRY_KEYS)
    kw: dict[str, Any] = {}
    if "max_retries" in table:
        kw["max_retries"] = _int(table["max_retries"], f"{path}.max_retries", 0, 10)
    if "budget_ratio" in table:
        kw["budget_ratio"] = _number(table["budget_ratio"], f"{path}.budget_ratio", 0.0, 10.0)
    if "budget_min_per_second" in table:
        kw["budget_min_per_second"] = _number(
            table["budget_min_per_second"], f"{path}.budget_min_per_second", 0.0, 1e6
        )
    for key in ("budget_window", "backoff_initial", "backoff_max"):
        if key in table:
            kw[key] = _duration(table[key], f"{path}.{key}")
    if "on_status" in table:
        raw = table["on_status"]
        if not isinstance(raw, list):
            raise ConfigError(f"{path}.on_status", raw, "a list of 5xx status codes")
        kw["on_status"] = tuple(
            _int(s, f"{path}.on_status[{i}]", 500, 599) for i, s in enumerate(raw)
        )
    if "replay_buffer" in table:
        kw["replay_buffer"] = _int(table["replay_buffer"], f"{path}.replay_buffer", 0, 1 << 24)
    retry = RetrySettings(**kw)
    if retry.backoff_max < retry.backoff_initial:
        raise ConfigError(
            f"{path}.backoff_max", table.get("backoff_max"), "at least backoff_initial"
        )
    return retry


def _header_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ConfigError(path, value, "an HTTP header name")
    return value.lower()


def parse_http_settings(value: object, path: str) -> HttpSettings:
    """Validate an ``http`` table: ``{request_timeout = "10s", inject_headers = {...}, ...}``.

    ``inject_headers`` maps header names to file paths:
    ``inject_headers = { Authorization = "/var/run/secrets/api/authorization" }``.
    """
    table = _norm(value, path, _KEYS)
    kw: dict[str, Any] = {}
    for key in ("request_timeout", "keepalive_timeout", "pool_idle_timeout"):
        if key in table:
            kw[key] = _duration(table[key], f"{path}.{key}")
    if "upstream_host" in table:
        host = table["upstream_host"]
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
            raise ConfigError(f"{path}.upstream_host", host, "a host or host:port")
        kw["upstream_host"] = host.strip()
    if "request_id_header" in table:
        kw["request_id_header"] = _header_name(
            table["request_id_header"], f"{path}.request_id_header"
        )
    if "max_header_bytes" in table:
        kw["max_header_bytes"] = _int(
            table["max_header_bytes"], f"{path}.max_header_bytes", 1024, 1 << 20
        )
    if "pool_max_idle" in table:
        kw["pool_max_idle"] = _int(table["pool_max_idle"], f"{path}.pool_max_idle", 0, 10000)
    if "inject_headers" in table:
        raw = table["inject_headers"]
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}.inject_headers", raw, "a table of header = file path")
        items: list[tuple[str, Path]] = []
        for name, file in raw.items():
            where = f"{path}.inject_headers.{name}"
            header = _header_name(name, where)
            if header in ("host", "content-length", "transfer-encoding", "connection"):
                raise ConfigError(where, file, "a header that does not frame the message")
            if not isinstance(file, str) or not file.strip():
                raise ConfigError(where, file, "a file path")
            items.append((header, Path(file.strip())))
        kw["inject_headers"] = tuple(items)
    if "retry" in table:
        kw["retry"] = _retry(table["retry"], f"{path}.retry")
    return HttpSettings(**kw)


def lane_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``AMBASSADOR_HTTP_LANE``: ``on`` (default, where epoll exists) or ``off``."""
    env = os.environ if environ is None else environ
    wanted = env.get("AMBASSADOR_HTTP_LANE", "on").strip().lower() or "on"
    if wanted not in ("on", "off"):
        raise ConfigError("AMBASSADOR_HTTP_LANE", wanted, "on or off")
    return wanted == "on" and hasattr(select, "epoll")
