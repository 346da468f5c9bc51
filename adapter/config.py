"""The adapter's settings: flags, ``ADAPTER_*`` environment variables, a TOML file.

``AdapterSettings`` is the one declaration; ``sidecar_common.settings`` fills it
with the usual precedence (flag > env > file > default) and reports bad values
as one-line ``ConfigError``s. ``validate`` then checks what a type cannot say
(regexes compile, the zone exists, the mode is unambiguous) before anything
starts, so a typo never surfaces as a crash half-way through a log stream.
"""

from __future__ import annotations

import importlib
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as setting
from pathlib import Path
from typing import Literal

from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import HostPort
from sidecar_common.settings import load_settings

from .lines import DEFAULT_MAX_LINE_BYTES, MIN_MAX_LINE_BYTES

__all__ = ["DROP_POLICIES", "AdapterSettings", "load", "parse_fields", "validate"]

DROP_POLICIES = ("block", "drop-newest", "drop-oldest")
DropPolicy = Literal["block", "drop-newest", "drop-oldest"]


def _meta(help: str, **extra: object) -> dict[str, object]:
    return {"help": help, **extra}


@dataclass
class AdapterSettings:
    """Every setting of ``adapter run``; the field name is the TOML key and ``ADAPTER_<NAME>``."""

    # Parsing (passed to the pipeline).
    format: str = setting(default="auto", metadata=_meta("input format: auto or a format name"))
    schema: Literal["ecs", "otel"] = setting(default="ecs", metadata=_meta("output schema"))
    timezone: str = setting(default="UTC", metadata=_meta("zone of timestamps without one"))
    keep_original: bool = setting(default=False, metadata=_meta("add event.original"))
    pattern: list[str] = setting(
        default_factory=list, metadata=_meta("custom regex with named groups (repeatable)")
    )
    multiline: bool = setting(default=True, metadata=_meta("join tracebacks and stack traces"))
    continuation: str | None = setting(
        default=None, metadata=_meta("regex: a line matching it continues the previous record")
    )
    flush_timeout: float = setting(
        default=0.1,
        metadata=_meta("how long a multiline record waits for more lines", duration=True),
    )
    field: list[str] = setting(
        default_factory=list, metadata=_meta("static field KEY=VALUE (repeatable)")
    )
    redact: list[str] = setting(
        default_factory=list, metadata=_meta("extra redaction regex (repeatable)")
    )
    redact_defaults: bool = setting(
        default=True, metadata=_meta("redact passwords, bearer tokens and card numbers")
    )
    # Inputs.
    tail: list[str] = setting(default_factory=list, metadata=_meta("files to tail (glob)"))
    checkpoint: Path | None = setting(
        default=None, metadata=_meta("checkpoint file of the tail input")
    )
    tail_interval: float = setting(
        default=0.25, metadata=_meta("tail polling interval", duration=True, min=0.01)
    )
    max_line_bytes: int = setting(
        default=DEFAULT_MAX_LINE_BYTES,
        metadata=_meta(
            "longer lines are split into pieces marked truncated",
            min=MIN_MAX_LINE_BYTES,
            max=64 * 1024 * 1024,
        ),
    )
    # Outputs.
    output: Literal["stdout", "forward"] = setting(default="stdout", metadata=_meta("output"))
    forward_host: str = setting(default="127.0.0.1", metadata=_meta("Fluentd forward host"))
    forward_port: int = setting(
        default=24224, metadata=_meta("Fluentd forward port", min=1, max=65535)
    )
    forward_socket: Path | None = setting(
        default=None, metadata=_meta("Fluentd forward unix socket (instead of host/port)")
    )
    forward_tag: str = setting(default="adapter", metadata=_meta("Fluentd tag"))
    forward_ack_timeout: float = setting(
        default=10.0, metadata=_meta("resend a chunk not acked in time", duration=True, min=0.01)
    )
    forward_retry_max: float = setting(
        default=30.0,
        metadata=_meta("longest wait between two delivery attempts", duration=True, min=0.01),
    )
    forward_chunk_records: int = setting(
        default=1000, metadata=_meta("records per forward chunk at most", min=1)
    )
    buffer_dir: Path | None = setting(
        default=None, metadata=_meta("directory for chunks while the collector is down")
    )
    buffer_max_bytes: int = setting(
        default=256 * 1024 * 1024, metadata=_meta("disk buffer limit in bytes", min=0)
    )
    buffer_memory_bytes: int = setting(
        default=8 * 1024 * 1024, metadata=_meta("memory buffer limit in bytes", min=1024)
    )
    drop_policy: DropPolicy = setting(
        default="block", metadata=_meta("when buffers are full: block, drop-newest, drop-oldest")
    )
    # Service.
    admin: HostPort | None = setting(
        default=None, metadata=_meta("admin server address (/healthz /readyz /metrics)")
    )
    log_level: str = setting(default="info", metadata=_meta("level of the adapter's own log"))
    drain_timeout: float = setting(
        default=10.0,
        metadata=_meta(
            "at exit, how long to try delivering before leaving chunks on disk", duration=True
        ),
    )


def load(
    cli: Mapping[str, object],
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AdapterSettings:
    """Load and validate the settings, or raise ``ConfigError``."""
    settings = load_settings(
        AdapterSettings, prefix="ADAPTER", cli=cli, config_file=config_file, env=env
    )
    validate(settings)
    return settings


def _compile(setting: str, regex: str) -> None:
    try:
        re.compile(regex)
    except re.error as exc:
        raise ConfigError(setting, regex, f"a valid regular expression ({exc})") from None


def parse_fields(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a dict; a dotted key (service.name) is an ECS field."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z0-9_.@-]+", key.strip()):
            raise ConfigError("--field", item, "KEY=VALUE with a dotted field name as KEY")
        out[key.strip()] = value
    return out


def validate(s: AdapterSettings) -> None:
    """Checks that need more than a type; raises ``ConfigError``.

    Also normalises: ``--pattern`` with the default ``--format auto`` selects
    ``custom`` (the patterns would otherwise be ignored).
    """
    for regex in s.pattern:
        _compile("--pattern", regex)
        if "?P<" not in regex:
            raise ConfigError("--pattern", regex, "a regex with named groups, e.g. (?P<message>.*)")
    for regex in s.redact:
        _compile("--redact", regex)
    if s.continuation is not None:
        _compile("--continuation", s.continuation)
    try:
        zoneinfo.ZoneInfo(s.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            "--timezone", s.timezone, "a zone name such as UTC or Europe/Paris"
        ) from None
    parse_fields(s.field)
    known = _known_formats()
    if known is not None and s.format not in known:
        raise ConfigError("--format", s.format, "one of: " + ", ".join(sorted(known)))
    if s.pattern and s.format == "auto":
        s.format = "custom"  # --pattern alone means: parse with these patterns
    if s.pattern and s.format != "custom":
        raise ConfigError("--pattern", s.pattern[0], "--format custom (or auto), not " + s.format)
    if s.format == "custom" and not s.pattern:
        raise ConfigError("--format", s.format, "custom together with at least one --pattern")
    if s.checkpoint is not None and not s.tail:
        raise ConfigError("--checkpoint", str(s.checkpoint), "used only with --tail")
    if not s.forward_tag or any(c.isspace() for c in s.forward_tag):
        raise ConfigError("--forward-tag", s.forward_tag, "a non-empty tag without spaces")


def _known_formats() -> set[str] | None:
    """Names ``--format`` accepts, from the parsers module (None if it cannot say)."""
    try:
        parsers = importlib.import_module("adapter.parsers")
    except ImportError:
        return None
    formats = getattr(parsers, "FORMATS", None)
    if formats is None:
        return None
    return {"auto", "custom", *formats}
