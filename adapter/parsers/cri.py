"""The CRI container log format (containerd, CRI-O): ``<RFC3339Nano> <stream> <F|P> <line>``.

``P`` marks a partial line (the runtime splits lines longer than 16 KiB); the
pipeline joins consecutive partials of one stream up to the final ``F``. The
inner line is then parsed like any other (auto-detected), so a JSON-logging app
under /var/log/containers still comes out structured.
"""

from __future__ import annotations

from adapter.parsers.base import ParseContext, Partial


def split(text: str, ctx: ParseContext) -> tuple[int, str, bool, str] | None:
    """(time ns, stream, is_partial, inner line), or None when this is no CRI line."""
    sp = text.find(" ")
    if sp < 20:
        return None
    stream = text[sp + 1 : sp + 7]
    if stream not in ("stdout", "stderr") or text[sp + 7 : sp + 8] != " ":
        return None
    tag = text[sp + 8 : sp + 9]
    if tag not in ("F", "P") or (len(text) > sp + 9 and text[sp + 9] != " "):
        return None
    found = ctx.timestamps.parse_iso(text)
    if found is None or found[1] != sp:
        return None
    return found[0], stream, tag == "P", text[sp + 10 :]


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """A CRI line as a record of its own (the pipeline unwraps and re-parses the inner line)."""
    found = split(text, ctx)
    if found is None:
        return None
    ns, stream, _partial, inner = found
    return {"@timestamp": ns, "stream": stream, "message": inner}
