"""logfmt: ``time=... level=info msg="hello world" user=42`` (Heroku, logrus, go-kit, Grafana)."""

from __future__ import annotations

import json
import re

from adapter.parsers.base import ParseContext, Partial, from_mapping

# One pair: a key, then optionally = and a quoted or bare value. Bare keys are flags (value true).
_PAIR = re.compile(r'[ \t]*([^\s="]+)(?:=(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^\s"]*)))?[ \t]*')
_FIRST = re.compile(r'[^\s="]+=')


def unquote(raw: str) -> str:
    if "\\" not in raw:
        return raw
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw.replace('\\"', '"').replace("\\\\", "\\")
    return value if isinstance(value, str) else raw


def pairs(text: str, pos: int = 0) -> dict[str, str | bool] | None:
    """All key=value pairs from ``pos`` to the end, or None if anything else is in the way."""
    out: dict[str, str | bool] = {}
    end = len(text)
    match = _PAIR.match
    while pos < end:
        m = match(text, pos)
        if m is None or m.end() == pos:
            return None
        key, quoted, bare = m.groups()
        if quoted is not None:
            out[key] = unquote(quoted)
        elif bare is not None:
            out[key] = bare
        else:
            out[key] = True
        pos = m.end()
    return out


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """A logfmt line: it must start with ``key=`` and hold at least two pairs with values."""
    if _FIRST.match(text) is None:
        return None
    found = pairs(text)
    if found is None or sum(1 for v in found.values() if v is not True) < 2:
        return None
    return from_mapping(found, ctx)
