"""Python ``logging``: the default ``LEVEL:logger:message`` and the common asctime formats.

Recognised after a leading ``%(asctime)s`` (any layout adapter.timestamps reads):
``- %(name)s - %(levelname)s - %(message)s`` (the cookbook's), ``%(levelname)s %(name)s: ...``,
``[%(levelname)s] %(name)s: ...``, ``:%(levelname)s:%(name)s:...``, Flask's
``%(levelname)s in %(module)s: ...`` and gunicorn's ``[pid] [LEVEL] ...``.
"""

from __future__ import annotations

import re

from adapter.parsers.base import ParseContext, Partial, from_groups, match_after_timestamp

LEVELS = r"(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|NOTSET)"
DEFAULT = re.compile(LEVELS + r":(?P<logger>[^:]*):(?P<msg>.*)", re.DOTALL)
# Patterns for the text after the timestamp, tried in order.
REST = (
    re.compile(r",?\d{0,3} - (?P<logger>.+?) - " + LEVELS + r" - (?P<msg>.*)", re.DOTALL),
    re.compile(r" \[?" + LEVELS + r"\]? +(?P<logger>[\w.]+): (?P<msg>.*)", re.DOTALL),
    re.compile(r":" + LEVELS + r":(?P<logger>[^:]*):(?P<msg>.*)", re.DOTALL),
    re.compile(r" " + LEVELS + r" in (?P<origin_function>[\w.<>]+): (?P<msg>.*)", re.DOTALL),
    re.compile(r" \[(?P<pid>\d+)\] \[" + LEVELS + r"\] (?P<msg>.*)", re.DOTALL),
)


def parse_rest(text: str, end: int, ns: int, ctx: ParseContext) -> Partial | None:
    """The part after a leading timestamp ending at ``end``, in one of the REST layouts."""
    return match_after_timestamp(REST, text, end, ns, ctx)


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """A line of Python logging output, or None."""
    c = text[:1]
    if c.isupper():
        m = DEFAULT.match(text)
        return None if m is None else from_groups(m.groupdict(), ctx)
    found = ctx.timestamps.parse_leading(text, ctx.wall)
    if found is None:
        return None
    return parse_rest(text, found[1], found[0], ctx)
