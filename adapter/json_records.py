"""JSON lines straight to ECS documents: one compiled builder per layout of keys.

A service's JSON lines carry the same keys, in the same order, with values of the same
types, line after line. For such a layout every decision of the general path is known
before the values are: where ``from_mapping`` routes each key, which static fields,
``stream`` and ``log.file.path`` are added, and how ``schema.to_ecs`` nests the result.
So a layout seen a few times is compiled into one function that takes the values and
returns the document as one dict display, with no flat record in between.

What depends on a value rather than on its type (a timestamp that does not parse, a
level word we do not know) makes the builder return None, as does a layout it does not
cover (nested ECS objects, a ``traceparent``, a value that would be converted, names
that collide): the line then takes the general path. The documents are the general
path's, key for key and in the same order; the property tests hold the two together.
"""

from __future__ import annotations

from typing import Any

from adapter.documents import GLOBALS, UNSEEN, Builder, Layouts, compile_document
from adapter.enrich import hex_id
from adapter.parsers.base import (
    _INT_TARGETS,
    _LABEL,
    _LEVEL,
    _NESTED,
    _SECRET,
    _STR_TARGETS,
    _TIME,
    FIELD_MAP,
    REDACTED,
    ParseContext,
    _route,
)
from adapter.schema import Record

__all__ = ["JsonRecords"]

_FIELDS_MAX = 64
_INELIGIBLE = object()


def _assigned(target: str, kind: type) -> tuple[str, str] | object | None:
    """What ``base._assign`` does with a value of type ``kind`` at ``target``.

    ("field", target) or ("time", target) stores it, None sends it to labels, and
    _INELIGIBLE marks an outcome that depends on the value or converts it.
    """
    if kind is type(None):
        return None
    if target == _TIME:
        return ("time", target) if kind in (int, float) else None
    if target == _LEVEL:
        return None if kind in (dict, list, bool) else ("field", target)
    if target in _INT_TARGETS:
        if kind is int:
            return ("field", target)
        return _INELIGIBLE if kind is str else None
    if target in _STR_TARGETS:
        if kind is str:
            return ("field", target)
        if target == "message":  # any other value is written out as JSON text
            return _INELIGIBLE
        return None if kind in (dict, list) else _INELIGIBLE
    return ("field", target)


class JsonRecords:
    """Compiled builders for one pipeline (its static fields, redaction and options)."""

    def __init__(self, ctx: ParseContext, static: dict[str, str], *, keep_original: bool) -> None:
        self._ctx = ctx
        self._static = static
        self._keep_original = keep_original
        # Trace and span ids of a JSON line reach the builder only as strings.
        self._namespace = {**GLOBALS, "_ts": ctx.timestamps.rfc3339_value, "_hex": hex_id}
        self.layouts = Layouts(self._compile)

    def build(
        self, obj: dict[str, Any], text: str, stream: str, origin: str | None, wall: float
    ) -> Record | None:
        """The ECS document of ``obj`` (the JSON object of ``text``), or None: general path."""
        values = obj.values()
        layout = (tuple(obj), tuple(map(type, values)))
        build = self.layouts.plans[origin is not None].get(layout, UNSEEN)
        if build is UNSEEN:
            build = self.layouts.learn(layout, origin is not None)
        if build is None:
            return None
        return build(text, stream, origin, wall, None, *values)  # type: ignore[no-any-return]

    def _compile(self, layout: Any, with_origin: bool) -> Builder | None:
        keys: tuple[str, ...] = layout[0]
        kinds: tuple[type, ...] = layout[1]
        if len(keys) > _FIELDS_MAX:
            return None
        # from_mapping, decided on the keys and the types of the values.
        out: dict[str, str] = {}  # flat name -> source of its value
        labels: dict[str, str] = {}
        timestamp = None
        ctx = self._ctx
        for i, (key, kind) in enumerate(zip(keys, kinds, strict=True)):
            arg = f"v{i}"
            target = ctx.routes.get(key) or _route(key, ctx)
            action: Any
            if target is _LABEL:
                action = None
            elif kind is str and target is _TIME and _TIME not in out:
                action = ("time", _TIME)
            elif target is _LEVEL and kind is str and _LEVEL not in out:
                action = ("field", _LEVEL)
            elif kind is int and target in _INT_TARGETS and target not in out:
                action = ("field", target)
            elif target is _SECRET:
                labels[key] = repr(REDACTED)
                continue
            elif target is _NESTED:
                if kind is dict:
                    return None
                target = FIELD_MAP.get(key, _LABEL)
                action = None if target is _LABEL or target in out else _assigned(target, kind)
            elif target in out:
                action = None
            elif kind is str and target in _STR_TARGETS:
                action = ("field", target)
            else:
                action = _assigned(target, kind)
            if action is _INELIGIBLE:
                return None
            if action is None:
                labels[key] = arg
            elif action[0] == "time":
                out[_TIME] = arg
                timestamp = f"_ts({arg}, wall)"
            else:
                out[action[1]] = arg
        if labels:
            out["labels"] = "{" + ", ".join(f"{k!r}: {v}" for k, v in labels.items()) + "}"
        return compile_document(
            out,
            [f"v{i}" for i in range(len(keys))],
            static=self._static,
            with_origin=with_origin,
            keep_original=self._keep_original,
            timestamp=timestamp,
            namespace=self._namespace,
        )
