"""Plain text: whatever the line is, pull out a leading timestamp and a level word.

``2024-01-02 15:04:05,123 ERROR something broke`` -> time, level error, message
``something broke``; ``[pid]``, ``[thread]`` and ``user@db`` prefixes between the two
(PostgreSQL's ``%m [%p] %q%u@%d``) are kept as fields. Single letters D/I/W/E/F/V count
as a level only right after a timestamp. This parser never fails: a line with
neither is a record whose message is the whole line.
"""

from __future__ import annotations

import re

from adapter.parsers.base import ParseContext, Partial

WORDS = (
    r"(?:TRACE|DEBUG[1-5]?|INFO|NOTICE|WARNING|WARN|ERROR|ERR|CRITICAL|CRIT|FATAL|PANIC|SEVERE|ALERT|EMERG|LOG"
    r"|Trace|Debug|Info|Notice|Warning|Warn|Error|Critical|Fatal"
    r"|trace|debug|info|notice|warning|warn|error|critical|fatal"
    # PostgreSQL's companions of an ERROR line: no levels of their own (kept under labels.level).
    r"|STATEMENT|DETAIL|HINT|CONTEXT|QUERY|LOCATION)"
)
# After a timestamp: optional [pid], [thread], user@db, the level (maybe bracketed), the message.
AFTER_TS = re.compile(
    r"[ \t]*(?:\[(?P<pid>\d{1,9})\][ \t]*)?(?:\[(?P<thread>[^\]\d][^\]]{0,63})\][ \t]*)?"
    r"(?:(?P<session>[^\s@\[\]]*@[^\s\[\]]*)[ \t]+)?"
    r"[\[(<]?(?P<level>" + WORDS + r")[\])>]?(?=[:\s|]|$)[:|]?[ \t]*(?:-[ \t]+)?(?P<msg>.*)",
    re.DOTALL,
)
LETTER = re.compile(r"[ \t]+(?P<level>[DIWEFV])[ \t]+(?P<msg>.*)", re.DOTALL)
# Without a timestamp the level must look like one: ``[WARN] x``, ``ERROR: x``, ``INFO - x``.
NO_TS = re.compile(
    r"[\[(<](?P<blevel>" + WORDS + r")[\])>][:\s]?[ \t]*(?P<bmsg>.*)"
    r"|(?P<level>" + WORDS + r")(?:[ \t]*[:|]|[ \t]+-[ \t])[ \t]*(?P<msg>.*)",
    re.DOTALL,
)
_SEPARATORS = " \t-:|"


def parse_after(text: str, end: int, ns: int, ctx: ParseContext) -> Partial:
    """The rest of a line after a leading timestamp ending at ``end``."""
    out: Partial = {"@timestamp": ns}
    m = AFTER_TS.match(text, end)
    if m is not None:
        pid, thread, session, level, msg = m.groups()
        if pid is not None:
            out["process.pid"] = int(pid)
        if thread is not None:
            out["process.thread.name"] = thread.strip()
        if session is not None:
            out["labels"] = {"session": session}
        out["log.level"] = level
        out["message"] = msg
        return out
    m = LETTER.match(text, end)
    if m is not None:
        out["log.level"] = m.group(1)
        out["message"] = m.group(2)
        return out
    out["message"] = text[end:].lstrip(_SEPARATORS)
    return out


def parse(text: str, ctx: ParseContext) -> Partial:
    """Timestamp and level when there are any; the whole line as the message otherwise."""
    found = ctx.timestamps.parse_leading(text, ctx.wall)
    if found is not None:
        return parse_after(text, found[1], found[0], ctx)
    return parse_untimed(text)


def parse_untimed(text: str) -> Partial:
    """A line with no leading timestamp: a leading level word if it looks like one."""
    c = text[:1]
    if c == "[" or c == "(" or c == "<" or c.isalpha():
        m = NO_TS.match(text)
        if m is not None:
            blevel, bmsg, level, msg = m.groups()
            if blevel is not None:
                return {"log.level": blevel, "message": bmsg}
            return {"log.level": level, "message": msg}
    return {"message": text}
