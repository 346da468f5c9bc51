"""The adapter's pure pipeline: raw lines in, finished records out.

decode -> redact -> unwrap CRI/docker (joining partial lines) -> multiline join
-> parse (auto-detected or fixed format) -> enrich -> ECS or OTel document.

No I/O and no clock of its own: the shell passes each line with ``now``
(monotonic, for multiline flush deadlines) and ``wall`` (epoch seconds, the
time a line was read), calls :meth:`Pipeline.poll` at :meth:`Pipeline.next_deadline`,
and :meth:`Pipeline.flush` at end of input. Guarantees, tested with hypothesis:
every input line ends up in exactly one record (a joined record counts its
lines), invalid UTF-8 and unparseable lines become records with the raw text as
their message, nothing raises, and :func:`encode_json` always gives valid JSON.

Multiline state is kept per (origin, stream), so stdout and stderr of a wrapped
app, or several tailed files fed to one pipeline, never join each other's lines.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from adapter import multiline
from adapter.detect import detect_parse
from adapter.documents import Documents
from adapter.enrich import lift_trace, static_fields
from adapter.json_records import JsonRecords
from adapter.multiline import Pending
from adapter.parsers import FORMATS, CustomParser, ParseContext, Partial, cri, docker, plain
from adapter.parsers.base import Parser, from_mapping
from adapter.parsers.json_lines import loads_object
from adapter.redact import Redactor, redact_defaults
from adapter.schema import Record, to_ecs, to_otel
from adapter.timestamps import TimestampParser, wall_ns
from sidecar_common.errors import ConfigError

__all__ = ["Pipeline", "PipelineConfig", "PipelineStats", "Record", "encode_json"]

# Formats whose records may be followed by continuation lines, so are held until the next line
# (or the flush timeout). JSON, logfmt and access-log records are complete as they are: they go
# out at once, with no added latency.
_HOLDABLE = frozenset({"plain", "python", "java", "syslog", "klog", "custom"})
# Joined CRI/docker partial lines are capped (the runtime splits at 16 KiB; a line of many
# megabytes would otherwise be held whole): past this the joined part goes out marked truncated.
MAX_JOINED_CHARS = 1 << 20
_FIRST = frozenset({0})
_NONE: frozenset[int] = frozenset()


@dataclass
class PipelineConfig:
    """What the pipeline does; built by adapter.config from flags, environment and file."""

    format: str = "auto"  # "auto", a name from adapter.parsers.FORMATS, or "custom"
    custom_patterns: list[str] = field(default_factory=list)
    schema: Literal["ecs", "otel"] = "ecs"
    timezone: str = "UTC"
    keep_original: bool = False
    multiline: bool = True
    continuation: str | None = None
    flush_timeout: float = 0.1
    static_fields: dict[str, str] = field(default_factory=dict)
    redact_defaults: bool = True
    redact_patterns: list[str] = field(default_factory=list)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


@dataclass
class PipelineStats:
    """Counters the shell publishes as metrics (count in the loop, publish on scrape)."""

    lines_in: int = 0
    records_out: int = 0
    by_format: dict[str, int] = field(default_factory=dict)
    parse_failures: int = 0
    parse_failures_by_format: dict[str, int] = field(default_factory=dict)
    multiline_joins: int = 0  # lines joined onto a record started by an earlier line
    truncated_lines: int = 0
    invalid_utf8_lines: int = 0
    internal_errors: int = 0  # a parser bug caught by the last-resort guard (should stay 0)


@dataclass(slots=True)
class _Joining:
    """CRI ``P`` / docker partial lines waiting for their final piece."""

    parts: list[str]
    originals: list[str]
    chars: int
    wall: float


class Pipeline:
    """One pipeline per adapter; see the module docstring for the contract."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.stats = PipelineStats()
        self._ctx = ParseContext(timestamps=TimestampParser(config.timezone))
        self._redact = Redactor(defaults=config.redact_defaults, patterns=config.redact_patterns)
        if self._redact.active:
            self._ctx.secret_keys = self._redact.secret_keys
        self._static = static_fields(config.environ, config.static_fields)
        self._format = config.format
        self._parser: Parser | None = None
        if config.format == "custom":
            self._parser = CustomParser(config.custom_patterns)
        elif config.format not in FORMATS and config.format != "auto":
            raise ConfigError(
                "--format", config.format, "auto, custom or one of " + ", ".join(FORMATS)
            )
        elif config.format not in ("auto", "cri", "docker"):
            self._parser = FORMATS[config.format]
        # cri and docker are wrappers: the line inside is auto-detected like any other.
        if config.schema not in ("ecs", "otel"):
            raise ConfigError("--schema", config.schema, "ecs or otel")
        self._otel = config.schema == "otel"
        self._continuation: re.Pattern[str] | None = None
        if config.continuation:
            try:
                self._continuation = re.compile(config.continuation)
            except re.error as exc:
                raise ConfigError(
                    "--continuation", config.continuation, f"a valid regular expression ({exc})"
                ) from exc
        if not (config.flush_timeout >= 0 and math.isfinite(config.flush_timeout)):
            raise ConfigError("--flush-timeout", config.flush_timeout, "a duration >= 0")
        self._pending: dict[tuple[str | None, str], Pending] = {}
        self._joining: dict[tuple[str | None, str], _Joining] = {}
        self._unwrap = config.format in ("auto", "cri", "docker")
        self._holding = config.multiline
        self._keep_original = config.keep_original
        self._documents = Documents(self._static, keep_original=config.keep_original)
        self._json_records: JsonRecords | None = None
        if not self._otel and config.format in ("json", "auto"):
            self._json_records = JsonRecords(
                self._ctx, self._static, keep_original=config.keep_original
            )

    # -- the contract -----------------------------------------------------------------------
    def feed(
        self,
        line: bytes,
        *,
        stream: str = "stdout",
        now: float,
        wall: float,
        truncated: bool = False,
        origin: str | None = None,
    ) -> list[Record]:
        """One raw line without its newline; returns the records it completed (maybe none).

        ``origin`` names the source (a tailed file's path) and keeps multiline state of
        different sources apart.
        """
        return self.feed_lines(
            [line],
            stream=stream,
            now=now,
            wall=wall,
            truncated=_FIRST if truncated else _NONE,
            origin=origin,
        )

    def feed_lines(
        self,
        lines: list[bytes],
        *,
        stream: str = "stdout",
        now: float,
        wall: float,
        truncated: Collection[int] = (),
        origin: str | None = None,
    ) -> list[Record]:
        """:meth:`feed` for the lines of one read, in order: the records they completed.

        ``truncated`` holds the indexes of pieces of over-long lines. One call per read
        rather than per line: the per-line loop below is the adapter's hot path.
        """
        self.stats.lines_in += len(lines)
        out: list[Record] = []
        self._ctx.wall = wall
        if truncated or self._redact.patterns:
            for i, line in enumerate(lines):
                try:
                    self._feed(line, stream, now, wall, i in truncated, origin, out)
                except Exception:
                    self.stats.internal_errors += 1
                    out.append(self._fallback(line, stream, wall, origin))
            return out
        ctx = self._ctx
        redact = redact_defaults if self._redact.defaults else None
        unwrap = self._unwrap
        auto = self._format == "auto"
        parser = self._parser
        holding = self._holding
        key = (origin, stream)
        emit = self._emit
        json_doc = self._json_records.build if self._json_records is not None else None
        json_docs = 0  # JSON records the builders made, counted in the stats after the loop
        for line in lines:
            # The common case inline (the same steps as _feed and _line; this runs for every
            # line, and each call saved is a few per cent at 100,000 lines a second).
            try:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    self._feed(line, stream, now, wall, False, origin, out)
                    continue
                if redact is not None:
                    text = redact(text, line)
                if unwrap and text:
                    if not auto:  # --format cri or docker
                        self._unwrapping(text, [], origin, stream, now, wall, out)
                        continue
                    # auto: a CRI or docker line is unwrapped; any other goes on as it is.
                    c = text[0]
                    wrapped: tuple[int | None, str, bool, str] | None = None
                    if c.isdigit():
                        wrapped = cri.split(text, ctx)
                    elif c == "{" and text.startswith('{"log":'):
                        wrapped = docker.split(text, ctx)
                    if wrapped is not None:
                        self._wrapped(wrapped, text, [], origin, now, wall, out)
                        continue
                if self._pending:
                    pending = self._pending.get(key)
                    if pending is not None:  # as in _line
                        if multiline.continues(pending, text, self._continuation):
                            multiline.append(
                                pending, text, text, 1, now + self.config.flush_timeout
                            )
                            self.stats.multiline_joins += 1
                            continue
                        del self._pending[key]
                        out.append(self._finish_pending(pending))
                if json_doc is not None and text[:1] == "{":
                    obj = loads_object(text)
                    if obj is not None:  # a JSON line: straight to its document
                        doc = json_doc(obj, text, stream, origin, wall)
                        if doc is None:
                            doc = emit(from_mapping(obj, ctx), "json", stream, origin, text, wall)
                        else:
                            json_docs += 1
                        out.append(doc)
                        continue
                if parser is None:
                    fmt, partial = self._parse(text)
                else:
                    found = parser(text, ctx)
                    if found is None:
                        fmt, partial = self._unparsed(text)
                    else:
                        fmt, partial = self._format, found
                if holding and fmt in _HOLDABLE:
                    self._hold(key, partial, fmt, text, None, [text], [], 1, now, wall)
                else:
                    out.append(emit(partial, fmt, stream, origin, text, wall))
            except Exception:
                self.stats.internal_errors += 1
                out.append(self._fallback(line, stream, wall, origin))
        if json_docs:
            stats = self.stats
            stats.records_out += json_docs
            stats.by_format["json"] = stats.by_format.get("json", 0) + json_docs
        return out

    def poll(self, now: float) -> list[Record]:
        """Records whose multiline flush timeout has passed."""
        if not self._pending:
            return []
        due = [key for key, p in self._pending.items() if p.deadline <= now]
        return [self._finish_pending(self._pending.pop(key)) for key in due]

    def flush(self) -> list[Record]:
        """End of input: every pending record and partial line, in arrival order per source."""
        out: list[Record] = []
        for key in list(self._joining):
            joining = self._joining.pop(key)
            self._line(
                "".join(joining.parts),
                key[1],
                None,
                joining.originals,
                len(joining.originals),
                ["partial"],
                key[0],
                joining.wall,
                joining.wall,
                out,
                hold=False,
            )
        for key in list(self._pending):
            out.append(self._finish_pending(self._pending.pop(key)))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` should next be called (None: nothing is pending)."""
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    # -- per line ---------------------------------------------------------------------------
    def _feed(
        self,
        line: bytes,
        stream: str,
        now: float,
        wall: float,
        truncated: bool,
        origin: str | None,
        out: list[Record],
    ) -> None:
        tags: list[str] = []
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            # Invalid bytes become visible \xNN escapes: valid text showing exactly what was read.
            text = line.decode("utf-8", "backslashreplace")
            tags.append("invalid_utf8")
            self.stats.invalid_utf8_lines += 1
        if truncated:
            tags.append("truncated")
            self.stats.truncated_lines += 1
        if self._redact.active:
            text = self._redact(text)
        ctx = self._ctx
        ctx.wall = wall
        if self._unwrap and text:
            self._unwrapping(text, tags, origin, stream, now, wall, out, hold=not truncated)
            return
        self._line(text, stream, None, [text], 1, tags, origin, now, wall, out, hold=not truncated)

    def _unwrapping(
        self,
        text: str,
        tags: list[str],
        origin: str | None,
        stream: str,
        now: float,
        wall: float,
        out: list[Record],
        *,
        hold: bool = True,
    ) -> None:
        """A non-empty line in auto/cri/docker mode: a CRI or docker line, or any other."""
        ctx = self._ctx
        c = text[0]
        wrapped: tuple[int | None, str, bool, str] | None = None
        if c == "{" and self._format != "cri" and text.startswith('{"log":'):
            wrapped = docker.split(text, ctx)
        elif c.isdigit() and self._format != "docker":
            wrapped = cri.split(text, ctx)
        if wrapped is not None:
            self._wrapped(wrapped, text, tags, origin, now, wall, out)
            return
        if self._format != "auto":
            self._failed(self._format)
        elif hold and not tags and not (self._pending and (origin, stream) in self._pending):
            # An ordinary line after all (an access log's IPv4 address, a timestamp): the
            # same steps as _line, as feed's fast path takes them.
            fmt, partial = self._parse(text)
            if self._holding and fmt in _HOLDABLE:
                self._hold((origin, stream), partial, fmt, text, None, [text], [], 1, now, wall)
            else:
                out.append(self._emit(partial, fmt, stream, origin, text, wall))
            return
        self._line(text, stream, None, [text], 1, tags, origin, now, wall, out, hold=hold)

    def _wrapped(
        self,
        wrapped: tuple[int | None, str, bool, str],
        text: str,
        tags: list[str],
        origin: str | None,
        now: float,
        wall: float,
        out: list[Record],
    ) -> None:
        ns, stream, partial, inner = wrapped
        key = (origin, stream)
        joining = self._joining.get(key)
        if partial:
            if joining is None:
                joining = self._joining[key] = _Joining([], [], 0, wall)
            joining.parts.append(inner)
            joining.originals.append(text)
            joining.chars += len(inner)
            if joining.chars <= MAX_JOINED_CHARS:
                return
            del self._joining[key]
            tags.append("truncated")
            self._line(
                "".join(joining.parts),
                stream,
                ns,
                joining.originals,
                len(joining.originals),
                tags,
                origin,
                now,
                wall,
                out,
                hold=False,
            )
            return
        if joining is not None:
            del self._joining[key]
            joining.parts.append(inner)
            joining.originals.append(text)
            self._line(
                "".join(joining.parts),
                stream,
                ns,
                joining.originals,
                len(joining.originals),
                tags,
                origin,
                now,
                wall,
                out,
                hold=True,
            )
            return
        self._line(
            inner, stream, ns, [text], 1, tags, origin, now, wall, out, hold="truncated" not in tags
        )

    def _line(
        self,
        text: str,
        stream: str,
        wrapper_ns: int | None,
        originals: list[str],
        count: int,
        tags: list[str],
        origin: str | None,
        now: float,
        wall: float,
        out: list[Record],
        *,
        hold: bool,
    ) -> None:
        """One logical line (CRI partials already joined): multiline, parse, emit or hold."""
        key = (origin, stream)
        pending = self._pending.get(key)
        if pending is not None:
            if hold and multiline.continues(pending, text, self._continuation):
                multiline.append(
                    pending, text, "\n".join(originals), count, now + self.config.flush_timeout
                )
                pending.tags.extend(t for t in tags if t not in pending.tags)
                self.stats.multiline_joins += count
                return
            del self._pending[key]
            out.append(self._finish_pending(pending))
        self._ctx.wall = wall
        fmt, partial = self._parse(text)
        if hold and self._holding and fmt in _HOLDABLE:
            self._hold(key, partial, fmt, text, wrapper_ns, originals, tags, count, now, wall)
            return
        out.append(
            self._record(partial, fmt, stream, wrapper_ns, originals, count, tags, origin, wall)
        )

    def _hold(
        self,
        key: tuple[str | None, str],
        partial: Partial,
        fmt: str,
        text: str,
        wrapper_ns: int | None,
        originals: list[str],
        tags: list[str],
        count: int,
        now: float,
        wall: float,
    ) -> None:
        """Keep a record that later lines may continue (multiline) until they say otherwise."""
        state, own = multiline.start_state(text)
        self._pending[key] = Pending(
            key=key,
            partial=partial,
            fmt=fmt,
            first=text,
            state=state,
            deadline=now + self.config.flush_timeout,
            wrapper_ns=wrapper_ns,
            originals=list(originals),
            tags=list(tags),
            count=count,
            chars=len(text),
            own_error=own,
            read_ns=wall_ns(wall),
        )

    def _parse(self, text: str) -> tuple[str, Partial]:
        ctx = self._ctx
        parser = self._parser
        if parser is None:
            fmt, partial, failed = detect_parse(text, ctx)
            if failed:
                self._failed("json" if text[:1] == "{" else "syslog" if text[:1] == "<" else fmt)
            return fmt, partial
        found = parser(text, ctx)
        if found is not None:
            return self._format, found
        return self._unparsed(text)

    def _unparsed(self, text: str) -> tuple[str, Partial]:
        """A line the fixed format's parser rejected."""
        ctx = self._ctx
        if self._format != "plain":
            self._failed(self._format)
        # Not in the configured format: still a record, with whatever plain text parsing finds.
        return "plain", plain.parse(text, ctx)

    def _failed(self, fmt: str) -> None:
        self.stats.parse_failures += 1
        self.stats.parse_failures_by_format[fmt] = (
            self.stats.parse_failures_by_format.get(fmt, 0) + 1
        )

    def _finish_pending(self, p: Pending) -> Record:
        if (
            not p.lines
            and p.state == "log"
            and p.count == 1
            and not p.tags
            and p.wrapper_ns is None
        ):
            # One line that nothing continued (most held lines): no joining to do.
            return self._emit(
                p.partial, p.fmt, p.key[1], p.key[0], p.originals[0], self._ctx.wall, p.read_ns
            )
        partial = multiline.finish(p)
        if p.state != "log" and p.count > 1 and "multiline" not in p.tags:
            p.tags.append("multiline")
        return self._record(
            partial,
            p.fmt,
            p.key[1],
            p.wrapper_ns,
            p.originals,
            p.count,
            p.tags,
            p.key[0],
            self._ctx.wall,
            read_ns=p.read_ns,
        )

    def _record(
        self,
        partial: Partial,
        fmt: str,
        stream: str,
        wrapper_ns: int | None,
        originals: list[str],
        count: int,
        tags: list[str],
        origin: str | None,
        wall: float,
        *,
        read_ns: int | None = None,
    ) -> Record:
        observed = read_ns if read_ns is not None else wall_ns(wall)
        if "@timestamp" not in partial:
            partial["@timestamp"] = wrapper_ns if wrapper_ns is not None else observed
        if "traceparent" in partial or "trace.id" in partial or "span.id" in partial:
            lift_trace(partial)
        for name, value in self._static.items():
            if name not in partial:
                partial[name] = value
        partial.setdefault("stream", stream)
        if origin is not None:
            partial["log.file.path"] = origin
        if self.config.keep_original:
            partial["event.original"] = (
                originals[0] if len(originals) == 1 else "\n".join(originals)
            )
        if tags:
            partial["tags"] = list(tags)
        stats = self.stats
        stats.records_out += 1
        stats.by_format[fmt] = stats.by_format.get(fmt, 0) + 1
        if self._otel:
            return to_otel(partial, observed)
        return to_ecs(partial)

    def _emit(
        self,
        partial: Partial,
        fmt: str,
        stream: str,
        origin: str | None,
        text: str,
        wall: float,
        read_ns: int | None = None,
    ) -> Record:
        """:meth:`_record` for the common case: one plain input line, no tags, no wrapper."""
        if self._otel:
            return self._record(
                partial, fmt, stream, None, [text], 1, [], origin, wall, read_ns=read_ns
            )
        stats = self.stats
        stats.records_out += 1
        by_format = stats.by_format
        by_format[fmt] = by_format.get(fmt, 0) + 1
        doc = self._documents.build(partial, stream, origin, text, wall, read_ns)
        if doc is not None:
            return doc
        return self._emit_general(partial, stream, origin, text, wall, read_ns)

    def _emit_general(
        self,
        partial: Partial,
        stream: str,
        origin: str | None,
        text: str,
        wall: float,
        read_ns: int | None,
    ) -> Record:
        """The steps the compiled builders of adapter.documents take in one (for any record)."""
        if "@timestamp" not in partial:
            partial["@timestamp"] = read_ns if read_ns is not None else wall_ns(wall)
        if "traceparent" in partial or "trace.id" in partial or "span.id" in partial:
            lift_trace(partial)
        if self._static:
            for name, value in self._static.items():
                if name not in partial:
                    partial[name] = value
        if "stream" not in partial:
            partial["stream"] = stream
        if origin is not None:
            partial["log.file.path"] = origin
        if self._keep_original:
            partial["event.original"] = text
        return to_ecs(partial)

    def _fallback(self, line: bytes, stream: str, wall: float, origin: str | None) -> Record:
        """The record of a line some stage failed on: raw text as the message, nothing else."""
        partial: Partial = {
            "message": line.decode("utf-8", "backslashreplace"),
            "tags": ["internal_error"],
        }
        if self._redact.active:
            partial["message"] = self._redact(partial["message"])
        return self._record(
            partial,
            "plain",
            stream,
            None,
            [partial["message"]],
            1,
            ["internal_error"],
            origin,
            wall,
        )


def _finite(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become null (as orjson writes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


def encode_json(record: Record) -> bytes:
    """One record as one line of JSON (no newline), UTF-8; valid JSON whatever the record holds.

    orjson does the common case. What it refuses goes through the stdlib: lone surrogates
    (from ``\\udXXX`` escapes in JSON input) cannot be UTF-8, so such a record is written with
    ASCII escapes; integers beyond 64 bits are written as they are; non-finite floats become null.
    """
    try:
        return orjson.dumps(record)
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return _dumps(record).encode("utf-8")
    except UnicodeEncodeError:
        return _dumps_ascii(_finite(record)).encode("ascii")
    except (ValueError, RecursionError):
        return _dumps_ascii(_finite(record)).encode("ascii")
