"""Apache/nginx access logs: the common and combined layouts (and combined plus extra fields).

``1.2.3.4 - bob [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://r/" "Moz/4"``

One anchored regex does the whole line; nginx escapes a quote in a field as ``\\x22`` and
Apache as ``\\"``, both of which the quoted-field pattern allows.
"""

from __future__ import annotations

import re

from adapter.parsers.base import ParseContext, Partial

_Q = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
ACCESS = re.compile(
    r"(\S+) (\S+) (\S+) \[([^\]]{20,40})\] "
    + _Q
    + r" (\d{3}|-) (\d+|-)(?: "
    + _Q
    + " "
    + _Q
    + r")?(.*)"
)
_REQUEST = re.compile(r"([A-Z][A-Za-z_-]{0,31}) (\S+)(?: (HTTP/[\d.]+))?")


def looks_like_ip(host: str) -> bool:
    """Cheap test for an IPv4 or IPv6 literal (what nginx's $remote_addr always is)."""
    c = host[:1]
    if c.isdigit():
        return (host.replace(".", "").isdigit() and host.count(".") == 3) or ":" in host
    return ":" in host and all(ch in "0123456789abcdefABCDEF:." for ch in host)


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """One access-log line, or None."""
    m = ACCESS.fullmatch(text)
    if m is None:
        return None
    host, ident, user, when, request, status, size, referrer, agent, rest = m.groups()
    ns = ctx.timestamps.parse_apache(when)
    if ns is None:
        return None
    out: Partial = {"@timestamp": ns, "message": text, "source.address": host}
    if looks_like_ip(host):
        out["source.ip"] = host
    if user != "-":
        out["user.name"] = user
    if ident != "-":
        out["labels"] = {"ident": ident}
    rm = _REQUEST.fullmatch(request)
    if rm is not None:
        method, target, version = rm.groups()
        out["http.request.method"] = method
        out["url.original"] = target
        q = target.find("?")
        if q >= 0:
            out["url.path"] = target[:q]
            out["url.query"] = target[q + 1 :]
        else:
            out["url.path"] = target
        if version is not None:
            out["http.version"] = version[5:]
    elif request and request != "-":
        out["url.original"] = request
    if status != "-":
        out["http.response.status_code"] = int(status)
    if size != "-":
        out["http.response.body.bytes"] = int(size)
    if referrer is not None and referrer != "-":
        out["http.request.referrer"] = referrer
    if agent is not None and agent != "-":
        out["user_agent.original"] = agent
    if rest and rest.strip():
        out.setdefault("labels", {})["extra"] = rest.strip()
    return out
