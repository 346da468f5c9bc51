"""Compiled ECS documents: a parsed line's fields in, its finished document out, in one call.

The general path makes a record in steps, each looking at every field again: the
pipeline adds the read time when the line had none, lifts trace ids, adds static
fields, ``stream`` and ``log.file.path``, and ``schema.to_ecs`` pops the timestamp,
level and message and nests the rest by dotted name. For one layout of fields (the
names of a partial record, in order) every one of those decisions is fixed, and a
source's lines have a handful of layouts. So :class:`Documents` compiles a layout seen
a few times into one function whose body is a single dict display of the document.

A builder returns None when the line needs what it does not do (a level word we do not
know goes under ``labels.level``); the line then takes the general path. Layouts whose
names collide (``log`` and ``log.level``), or that carry a ``traceparent``, are never
compiled. Property tests hold the builders to the general path, document for document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapter.enrich import hex_id
from adapter.levels import normalise
from adapter.schema import Record, ecs_display
from adapter.timestamps import format_rfc3339, wall_ns

__all__ = ["UNSEEN", "Builder", "Documents", "Layouts", "compile_document"]

Builder = Callable[..., "Record | None"]
# A layout is compiled when seen this often; at most this many are kept (and tracked).
LEARN_AFTER = 4
PLANS_MAX = 256
SEEN_MAX = 4096
FIELDS_MAX = 64
UNSEEN = _UNSEEN = object()
_TIME = "@timestamp"
_LEVEL = "log.level"


def _trace_id(value: Any) -> Any:
    """What ``enrich.lift_trace`` makes of a trace or span id."""
    return hex_id(value) if isinstance(value, str) else value


GLOBALS: dict[str, Any] = {
    "_fmt": format_rfc3339,
    "_wns": wall_ns,
    "_norm": normalise,
    "_hex": _trace_id,
}


def compile_document(
    fields: dict[str, str],
    args: list[str],
    *,
    static: dict[str, str],
    with_origin: bool,
    keep_original: bool,
    timestamp: str | None = None,
    namespace: dict[str, Any] | None = None,
) -> Builder | None:
    """A builder ``build(text, stream, origin, wall, read_ns, *args)`` for one layout.

    ``fields`` maps the partial record's flat names, in order, to the source of their
    values (an argument, or an expression on arguments). ``timestamp``, when given, is
    the source of the finished ``@timestamp`` string, which may be None (then the
    builder returns None); otherwise ``fields["@timestamp"]`` holds nanoseconds.
    Returns None for a layout the general path must handle.
    """
    out = dict(fields)
    if "traceparent" in out or len(out) > FIELDS_MAX:
        return None
    body: list[str] = []
    if timestamp is not None:
        body += [f"    ts = {timestamp}", "    if ts is None:", "        return None"]
        out.pop(_TIME, None)
    elif _TIME in out:
        body.append(f"    ts = _fmt({out.pop(_TIME)})")
    else:
        body.append("    ts = _fmt(_wns(wall) if read_ns is None else read_ns)")
    for name in ("trace.id", "span.id"):
        if name in out:
            out[name] = f"_hex({out[name]})"
    # Pipeline._emit: static fields, stream, log.file.path, event.original.
    for name, value in static.items():
        if name not in out:
            out[name] = repr(value)
    if "stream" not in out:
        out["stream"] = "stream"
    if with_origin:
        out["log.file.path"] = "origin"
    if keep_original:
        out["event.original"] = "text"
    level = out.pop(_LEVEL, None)
    if level is not None:
        body += [f"    lvl = _norm({level})", "    if lvl is None:", "        return None"]
    message = out.pop("message", None)
    if message is not None:  # to_ecs leaves out a message that is None
        body += [f"    if {message} is None:", "        return None"]
    display = ecs_display(
        list(out),
        list(out.values()),
        level=level is not None,
        message=message is not None,
        ts="ts",
        level_value="lvl",
        message_value=message or "",
    )
    if display is None:
        return None
    params = ", ".join(["text", "stream", "origin", "wall", "read_ns", *args])
    source = "\n".join([f"def build({params}):", *body, f"    return {display}", ""])
    scope = dict(namespace if namespace is not None else GLOBALS)
    exec(compile(source, "<adapter.documents layout>", "exec"), scope)
    build: Builder = scope["build"]
    return build


class Layouts:
    """Builders by layout, compiled once a layout has been seen ``LEARN_AFTER`` times."""

    def __init__(self, compile_layout: Callable[[Any, bool], Builder | None]) -> None:
        self._compile = compile_layout
        # [origin None, origin given] -> layout -> builder (None: left to the general path).
        # Callers look a layout up here themselves (the hot path) and call learn() on a miss.
        self.plans: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
        self._seen: dict[Any, int] = {}

    def learn(self, layout: Any, with_origin: bool) -> Builder | None:
        """A layout not in ``plans``: count it, and compile it once seen often enough."""
        plans = self.plans[with_origin]
        n = self._seen.get(layout, 0) + 1
        if n < LEARN_AFTER or len(plans) >= PLANS_MAX:
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()
            self._seen[layout] = n
            return None
        self._seen.pop(layout, None)
        build = self._compile(layout, with_origin)
        plans[layout] = build
        return build

    def __len__(self) -> int:
        return len(self.plans[0]) + len(self.plans[1])


class Documents:
    """Partial record -> ECS document, for one pipeline's static fields and options."""

    def __init__(self, static: dict[str, str], *, keep_original: bool) -> None:
        self._static = static
        self._keep_original = keep_original
        self.layouts = Layouts(self._compile)

    def build(
        self,
        partial: dict[str, Any],
        stream: str,
        origin: str | None,
        text: str,
        wall: float,
        read_ns: int | None,
    ) -> Record | None:
        """The document of ``partial`` (left untouched), or None: take the general path."""
        layout = tuple(partial)
        build = self.layouts.plans[origin is not None].get(layout, _UNSEEN)
        if build is _UNSEEN:
            build = self.layouts.learn(layout, origin is not None)
        if build is None:
            return None
        return build(text, stream, origin, wall, read_ns, *partial.values())  # type: ignore[no-any-return]

    def _compile(self, keys: tuple[str, ...], with_origin: bool) -> Builder | None:
        args = [f"v{i}" for i in range(len(keys))]
        return compile_document(
            dict(zip(keys, args, strict=True)),
            args,
            static=self._static,
            with_origin=with_origin,
            keep_original=self._keep_original,
        )
