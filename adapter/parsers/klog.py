"""Go klog/glog: ``I0102 15:04:05.000000   4242 server.go:42] message``.

The header has no year (inferred from the time the line was read). klog's
structured form, ``"message" key="value" key2=42``, is split into the message
and labels.
"""

from __future__ import annotations

import re

from adapter.parsers.base import ParseContext, Partial
from adapter.parsers.logfmt import pairs, unquote

KLOG = re.compile(
    r"([IWEFD])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) +(\d+) ([^:\]\s]+):(\d+)\] ?(.*)",
    re.DOTALL,
)
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"')
_LEVEL = {"I": "info", "W": "warn", "E": "error", "F": "fatal", "D": "debug"}


def parse(text: str, ctx: ParseContext) -> Partial | None:
    """One klog line, or None."""
    m = KLOG.fullmatch(text)
    if m is None:
        return None
    sev, mo, d, h, mi, s, frac, tid, file, line, msg = m.groups()
    ns = ctx.timestamps.infer_year(int(mo), int(d), int(h), int(mi), int(s), frac, ctx.wall)
    if ns is None:
        return None
    out: Partial = {
        "@timestamp": ns,
        "log.level": _LEVEL[sev],
        "process.thread.id": int(tid) if len(tid) < 10 else tid,
        "log.origin.file.name": file,
        "log.origin.file.line": int(line) if len(line) < 10 else line,
    }
    if msg.startswith('"'):
        qm = _QUOTED.match(msg)
        if qm is not None:
            rest = pairs(msg, qm.end()) if qm.end() < len(msg) else {}
            if rest is not None:
                out["message"] = unquote(qm.group(1))
                if rest:
                    out["labels"] = rest
                return out
    out["message"] = msg
    return out
