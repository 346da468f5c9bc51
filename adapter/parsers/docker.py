"""Docker's json-file log driver: ``{"log":"line\\n","stream":"stdout","time":"2024-...Z"}``.

A ``log`` value without its trailing newline is a partial (Docker splits lines
at 16 KiB); the pipeline joins partials like CRI's ``P`` lines.
"""

from __future__ import annotations

from typing import Any

from adapter.parsers.base import ParseContext, Partial
from adapter.parsers.json_lines import loads_object


def unwrap(obj: dict[str, Any], ctx: ParseContext) -> tuple[int | None, str, bool, str] | None:
    """(time ns, stream, is_partial, inner line) of a decoded json-file object, or None."""
    log = obj.get("log")
    stream = obj.get("stream")
    if not isinstance(log, str) or stream not in ("stdout", "stderr") or "time" not in obj:
        return None
    ns = ctx.timestamps.parse_value(obj["time"], ctx.wall)
    if log.endswith("\n"):
        log = log[:-2] if log.endswith("\r\n") else log[:-1]
        return ns, stream, False, log
    return ns, stream, True, log


def split(text: str, ctx: ParseContext) -> tuple[int | None, str, bool, str] | None:
    """Like :func:`unwrap`, from the raw line."""
    if not text.startswith('{"'):
        return None
    obj = loads_object(text)
    return None if obj is None else unwrap(obj, ctx)


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """A json-file line as a record of its own (the pipeline unwraps and re-parses the inner)."""
    found = split(text, ctx)
    if found is None:
        return None
    ns, stream, _partial, inner = found
    out: Partial = {"stream": stream, "message": inner}
    if ns is not None:
        out["@timestamp"] = ns
    return out
