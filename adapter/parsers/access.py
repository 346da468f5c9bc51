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


# Request lines repeat (health checks, static assets, the same API calls): their parts are
# kept, up to this many distinct request lines.
_REQUESTS_MAX = 4096
_requests: dict[str, tuple[str, str, str, str | None, str | None] | None] = {}


def _request(request: str) -> tuple[str, str, str, str | None, str | None] | None:
    """(method, target, path, query, HTTP version) of a request line, None if it is none."""
    rm = _REQUEST.fullmatch(request)
    if rm is None:
        parts = None
    else:
        method, target, version = rm.groups()
        q = target.find("?")
        path, query = (target[:q], target[q + 1 :]) if q >= 0 else (target, None)
        parts = (method, target, path, query, None if version is None else version[5:])
    if len(_requests) >= _REQUESTS_MAX:
        _requests.clear()
    _requests[request] = parts
    return parts


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
    if host[:1].isdigit():  # looks_like_ip's common case, inline
        if (host.replace(".", "").isdigit() and host.count(".") == 3) or ":" in host:
            out["source.ip"] = host
    elif looks_like_ip(host):
        out["source.ip"] = host
    if user != "-":
        out["user.name"] = user
    if ident != "-":
        out["labels"] = {"ident": ident}
    parts = _requests[request] if request in _requests else _request(request)
    if parts is not None:
        method, target, path, query, version = parts
        out["http.request.method"] = method
        out["url.original"] = target
        out["url.path"] = path
        if query is not None:
            out["url.query"] = query
        if version is not None:
            out["http.version"] = version
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
