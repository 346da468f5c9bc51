"""JSON lines: one JSON object per line (pino, bunyan, zap, logrus, structlog, ECS loggers)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from adapter.parsers.base import ParseContext, Partial, from_mapping

# NaN and Infinity are not JSON: keep them as the strings they were, so the output stays JSON.
_decode = json.JSONDecoder(parse_constant=str).decode
# A JSON document nested deeper than this would fail to encode again near the recursion limit.
_MAX_DEPTH = 200


def loads_object(text: str) -> dict[str, Any] | None:
    """The JSON object on this line, or None when the line is not exactly one object."""
    try:
        obj = orjson.loads(text)  # ~5x the stdlib's speed; strict, so anything it rejects...
    except orjson.JSONDecodeError:
        try:
            obj = _decode(
                text
            )  # ...gets a second chance here (NaN, lone surrogate escapes, huge ints)
        except (ValueError, RecursionError):
            return None
    if not isinstance(obj, dict):
        return None
    if (
        len(text) > 2 * _MAX_DEPTH
        and text.count("{") + text.count("[") > _MAX_DEPTH
        and _too_deep(obj)
    ):
        return None
    return obj


def _too_deep(obj: Any) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """A JSON object line: known keys mapped to ECS, the rest under labels."""
    if not text or text[0] != "{":
        text = text.strip()
        if not text.startswith("{"):
            return None
    obj = loads_object(text)
    if obj is None:
        return None
    return from_mapping(obj, ctx)
