"""Syslog: RFC 5424 and RFC 3164 (BSD), with or without the ``<PRI>`` header.

RFC 3164 timestamps have no year: it is inferred from the time the line was
read, so a ``Dec 31`` line read on 1 January lands in the old year. The
hostname in RFC 3164 is optional in practice (``/dev/log`` writers omit it), so
``host tag[pid]: msg`` and ``tag[pid]: msg`` both parse.
"""

from __future__ import annotations

import re

from adapter.levels import SYSLOG_NAMES
from adapter.parsers.base import ParseContext, Partial

# Quoted and bracketed parts are written unrolled (``[^"\\]*(?:\\.[^"\\]*)*``): the same
# language as ``(?:[^"\\]|\\.)*`` with one regex step per run of characters, not per character.
_PRI = re.compile(r"<(\d{1,3})>")
_RFC5424 = re.compile(
    r"(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[[^\]\\]*(?:\\.[^\]\\]*)*\])+)(?: (.*))?",
    re.DOTALL,
)
_SD_ELEMENT = re.compile(r"\[([^\s\]=]+)((?:\s+[^\s=\]]+=\"[^\"\\]*(?:\\.[^\"\\]*)*\")*)\s*\]")
_SD_PARAM = re.compile(r"([^\s=\]]+)=\"([^\"\\]*(?:\\.[^\"\\]*)*)\"")
# After the timestamp: optional hostname, then the tag with optional [pid], then ": ".
_TAGGED = re.compile(
    r" (?:([^\s:\[\]]+|\[[0-9a-fA-F:.]+\]) )?([^\s:\[\]]+)(?:\[([^\]]*)\])?: ?(.*)", re.DOTALL
)
_UNTAGGED = re.compile(r" (\S+) (.*)", re.DOTALL)


def _pri(out: Partial, pri: int) -> None:
    facility, severity = divmod(pri, 8)
    out["log.syslog.priority"] = pri
    out["log.syslog.facility.code"] = facility
    out["log.syslog.severity.code"] = severity
    out["log.level"] = SYSLOG_NAMES[severity]


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """An RFC 5424 or RFC 3164 line, or None."""
    pos = 0
    pri: int | None = None
    if text[:1] == "<":
        m = _PRI.match(text)
        if m is None:
            return None
        pri = int(m.group(1))
        if pri > 191:
            return None
        pos = m.end()
    # RFC 5424 starts with its VERSION (1-2 digits) and a space; RFC 3164 with a timestamp.
    c = text[pos : pos + 1]
    nxt = text[pos + 1 : pos + 2]
    if c.isdigit() and (nxt == " " or (nxt.isdigit() and text[pos + 2 : pos + 3] == " ")):
        out = _rfc5424(text, pos, ctx)
    else:
        out = _rfc3164(text, pos, ctx)
    if out is not None and pri is not None:
        _pri(out, pri)
    return out


def _rfc5424(text: str, pos: int, ctx: ParseContext) -> Partial | None:
    m = _RFC5424.fullmatch(text, pos)
    if m is None:
        return None
    version, when, host, app, procid, msgid, sd, msg = m.groups()
    out: Partial = {"log.syslog.version": version}
    if when != "-":
        found = ctx.timestamps.parse_iso(when)
        if found is None or found[1] != len(when):
            return None
        out["@timestamp"] = found[0]
    if host != "-":
        out["log.syslog.hostname"] = host
        out["host.hostname"] = host
    if app != "-":
        out["log.syslog.appname"] = app
        out["process.name"] = app
    if procid != "-":
        out["log.syslog.procid"] = procid
        if procid.isdigit() and len(procid) < 10:
            out["process.pid"] = int(procid)
    if msgid != "-":
        out["log.syslog.msgid"] = msgid
    if sd != "-":
        data: dict[str, dict[str, str]] = {}
        for element in _SD_ELEMENT.finditer(sd):
            params = {
                k: v.replace('\\"', '"').replace("\\]", "]").replace("\\\\", "\\")
                for k, v in _SD_PARAM.findall(element.group(2))
            }
            data[element.group(1)] = params
        out["log.syslog.structured_data"] = data
    msg = msg or ""
    if msg.startswith("\ufeff"):
        msg = msg[1:]
    out["message"] = msg
    return out


def _rfc3164(text: str, pos: int, ctx: ParseContext) -> Partial | None:
    c = text[pos : pos + 1]
    if c.isdigit():
        found = ctx.timestamps.parse_iso(text, pos)  # rsyslog's high-precision variant
    elif c.isupper():
        found = ctx.timestamps.parse_syslog(text, pos, ctx.wall)
    else:
        return None
    if found is None:
        return None
    ns, end = found
    out: Partial = {"@timestamp": ns}
    m = _TAGGED.fullmatch(text, end)
    if m is not None:
        host, tag, pid, msg = m.groups()
        if host is not None:
            out["log.syslog.hostname"] = host
            out["host.hostname"] = host
        out["log.syslog.appname"] = tag
        out["process.name"] = tag
        if pid:
            out["log.syslog.procid"] = pid
            if pid.isdigit() and len(pid) < 10:
                out["process.pid"] = int(pid)
        out["message"] = msg
        return out
    m = _UNTAGGED.fullmatch(text, end)
    if m is not None:
        out["log.syslog.hostname"] = out["host.hostname"] = m.group(1)
        out["message"] = m.group(2)
        return out
    if text[end:].strip() == "":
        out["message"] = ""
        return out
    return None
