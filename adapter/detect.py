"""Auto-detection: which format is this line, at the cost of a few character tests.

Running every parser's regex on every line would make ``--format auto`` several
times slower than a fixed format. Instead the first character (and at most a
few fixed positions) picks the one or two parsers that could match: ``{`` is
JSON, ``<`` syslog with a PRI, a digit is a timestamp or an IPv4 access log, an
upper-case letter is klog, BSD syslog, Python's default format or logfmt.
Each line is detected on its own, so an app that mixes formats is fine.
"""

from __future__ import annotations

from adapter.parsers import access, java, json_lines, klog, logfmt, plain, python, syslog
from adapter.parsers.base import ParseContext, Partial
from adapter.timestamps import MONTHS

# (format name, partial record, looked like that format but failed to parse)
Detected = tuple[str, Partial, bool]


def detect_parse(text: str, ctx: ParseContext) -> Detected:
    """Parse ``text`` with the format it looks like; plain text when it looks like none."""
    c = text[:1]
    if c == "{":
        found = json_lines.parse(text, ctx)
        if found is not None:
            return "json", found, False
        return "plain", plain.parse_untimed(text), True
    if c.isdigit():
        return _digit(text, ctx)
    if c == "<":
        found = syslog.parse(text, ctx)
        if found is not None:
            return "syslog", found, False
        return "plain", plain.parse_untimed(text), True
    if c.isalpha():
        return _alpha(text, c, ctx)
    if c == "[":
        ts = ctx.timestamps.parse_leading(text, ctx.wall)
        if ts is not None:
            return timestamped(text, ts[0], ts[1], ctx)
    elif c == ":":
        found = access.parse(text, ctx)  # "::1 - - [..." (IPv6 loopback client)
        if found is not None:
            return "access", found, False
    return "plain", plain.parse_untimed(text), False


def _digit(text: str, ctx: ParseContext) -> Detected:
    if text[1:2] == " " or (text[2:3] == " " and text[1:2].isdigit()):
        found = syslog.parse(text, ctx)  # RFC 5424 without PRI: "1 2024-01-02T..."
        if found is not None:
            return "syslog", found, False
    # An IPv4 access log starts "1.2.3.4 "; a timestamp never has a dot in its first 4 characters.
    if "." in text[1:4]:
        found = access.parse(text, ctx)
        if found is not None:
            return "access", found, False
    ts = ctx.timestamps.parse_leading(text, ctx.wall)
    if ts is not None:
        return timestamped(text, ts[0], ts[1], ctx)
    if "[" in text:
        found = access.parse(text, ctx)
        if found is not None:
            return "access", found, False
    return "plain", plain.parse_untimed(text), False


def _alpha(text: str, c: str, ctx: ParseContext) -> Detected:
    if c in "IWEFD" and text[5:6] == " " and text[1:5].isdigit():
        found = klog.parse(text, ctx)
        if found is not None:
            return "klog", found, False
    if text[3:4] == " " and text[:3] in MONTHS:
        found = syslog.parse(text, ctx)
        if found is not None:
            return "syslog", found, False
        ts = ctx.timestamps.parse_leading(text, ctx.wall)
        if ts is not None:
            return timestamped(text, ts[0], ts[1], ctx)
    if c.isupper() and ":" in text[4:10]:
        m = python.DEFAULT.match(text)
        if m is not None:
            return "python", python.parse(text, ctx) or plain.parse_untimed(text), False
    if "=" in text:
        found = logfmt.parse(text, ctx)
        if found is not None:
            return "logfmt", found, False
    if ":" in text[:40] and " [" in text:
        found = access.parse(text, ctx)  # IPv6 client address
        if found is not None:
            return "access", found, False
    return "plain", plain.parse_untimed(text), False


def timestamped(text: str, ns: int, end: int, ctx: ParseContext) -> Detected:
    """A line with a leading timestamp: Python, Java or plain by what follows it."""
    nxt = text[end : end + 3]
    if nxt == " - " or nxt[:1] in (":", ","):
        found = python.parse_rest(text, end, ns, ctx)
        if found is not None:
            return "python", found, False
    elif nxt[:1] == " ":
        found = java.parse_rest(text, end, ns, ctx)
        if found is not None:
            return "java", found, False
        found = python.parse_rest(text, end, ns, ctx)
        if found is not None:
            return "python", found, False
    return "plain", plain.parse_after(text, end, ns, ctx), False
