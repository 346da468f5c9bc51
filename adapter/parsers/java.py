"""Java logging: logback, log4j/log4j2, Spring Boot and JBoss layouts after a leading timestamp.

``2024-01-02 15:04:05.123 [main] ERROR com.example.App - message`` (logback, log4j2),
``... ERROR [main] com.example.App - message`` (log4j ``%-5p [%t] %c``),
``...  INFO 4242 --- [app] [  main] c.e.App : message`` (Spring Boot),
``... INFO  [org.jboss.as] (MSC thread 1) message`` (JBoss), ``... ERROR com.x.App [main] message``.
Time-only stamps (logback's default ``HH:mm:ss.SSS``) get today's date in the configured zone.
"""

from __future__ import annotations

import re

from adapter.parsers.base import ParseContext, Partial, match_after_timestamp

LEVELS = r"(?P<level>TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL|SEVERE|FINEST|FINER|FINE|CONFIG)"
_LOGGER = r"(?P<logger>[A-Za-z_$][\w$.:-]*)"
REST = (
    re.compile(
        r" \[(?P<thread>[^\]]*)\] +" + LEVELS + r" +" + _LOGGER + r" *- (?P<msg>.*)", re.DOTALL
    ),
    re.compile(
        r" +" + LEVELS + r" +\[(?P<thread>[^\]]*)\] +" + _LOGGER + r" *- (?P<msg>.*)", re.DOTALL
    ),
    re.compile(
        r" +"
        + LEVELS
        + r" +(?P<pid>\d+) +--- +(?:\[[^\]]*\] +)?\[(?P<thread>[^\]]*)\] +"
        + _LOGGER
        + r" +: (?P<msg>.*)",
        re.DOTALL,
    ),
    re.compile(
        r" +" + LEVELS + r" +\[" + _LOGGER + r"\] +\((?P<thread>[^)]*)\) (?P<msg>.*)", re.DOTALL
    ),
    re.compile(
        r" +" + LEVELS + r" +" + _LOGGER + r" +\[(?P<thread>[^\]]*)\] +(?:- )?(?P<msg>.*)",
        re.DOTALL,
    ),
    re.compile(r" +" + LEVELS + r" +" + _LOGGER + r" - (?P<msg>.*)", re.DOTALL),
)


def parse_rest(text: str, end: int, ns: int, ctx: ParseContext) -> Partial | None:
    """The part after a leading timestamp ending at ``end``, in one of the REST layouts."""
    return match_after_timestamp(REST, text, end, ns, ctx)


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """A line of a Java logging framework, or None."""
    found = ctx.timestamps.parse_leading(text, ctx.wall)
    if found is None:
        return None
    return parse_rest(text, found[1], found[0], ctx)
