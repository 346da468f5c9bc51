"""Multiline joining: stack traces and continuation lines become one record.

A small state machine per pending record decides, from the next line alone,
whether that line continues the record. It knows:

- Python tracebacks: ``Traceback (most recent call last):``, indented frames,
  the exception line, and chained exceptions (``The above exception was the
  direct cause...`` / ``During handling...``) with their blank lines. A
  traceback right after a warning-or-worse log line (``logger.exception``,
  ``exc_info=True``) joins that line's record; otherwise it is a record of its own.
- Java: ``\\tat`` frames, ``Caused by:``, ``Suppressed:``, ``... N more``, and
  the exception header line right after a log line (logback/log4j print it there).
- Go: ``panic:``/``fatal error:`` followed by goroutine dumps.
- Any indented line after a record (multi-line messages), and a user regex.

It is pure: the caller passes ``now``, and the flush deadline is data
(:attr:`Pending.deadline`); adapter.pipeline polls it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from adapter.parsers.base import Partial

# Bounds one joined record so a runaway dump cannot grow memory without limit (RSS < 50 MB):
# past either bound the next line starts a new record.
MAX_LINES = 5000
MAX_CHARS = 1 << 20

PY_TRACEBACK = "Traceback (most recent call last):"
_PY_CHAIN = ("The above exception was the direct cause", "During handling of the above exception")
_PY_EXC = re.compile(r"([A-Za-z_][\w.]*)(?:: (.*))?", re.DOTALL)
_JAVA_HEADER = re.compile(
    r"(?:Exception in thread \"(?P<thread>[^\"]*)\" )?"
    r"(?P<type>(?:[a-zA-Z_$][\w$]*\.)+[A-Za-z_$][\w$]*(?:Exception|Error|Throwable|Fault|Failure)[\w$]*)"
    r"(?:: (?P<msg>.*))?",
    re.DOTALL,
)
_JAVA_MORE = re.compile(r"\s*\.\.\. \d+ (?:more|common frames omitted)")
_GO_START = re.compile(r"(?P<type>panic|fatal error): (?P<msg>.*)", re.DOTALL)
_GOROUTINE = re.compile(r"goroutine \d+ \[[^\]]*\]:")
_GO_LINE = re.compile(
    r"\S+\(.*\)|created by \S.*|goroutine \d+ \[[^\]]*\]:|\[signal .*|panic: .*|exit status \d+"
    r"|\.\.\.additional frames elided\.\.\.|\[recovered\].*",
    re.DOTALL,
)
# Levels after which a Python traceback joins the pending line (logger.exception, exc_info=True).
_ERROR_LEVELS = frozenset(
    {"warning", "warn", "error", "err", "e", "critical", "crit", "fatal", "f", "severe", "alert"}
    | {"emerg", "panic", "exception"}
)


@dataclass(slots=True)
class Pending:
    """A record held back because the next lines may belong to it."""

    key: tuple[str | None, str]
    partial: Partial
    fmt: str
    first: str  # the first line's text (decoded, redacted)
    state: str  # "log", "py_tb", "py_exc", "py_gap", "py_chain", "java", "go"
    deadline: float
    wrapper_ns: int | None = None
    originals: list[str] = field(
        default_factory=list
    )  # raw texts of every input line, for event.original
    tags: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # continuation texts
    count: int = 1  # input lines in this record (CRI partials count one each)
    chars: int = 0
    exc_line: str | None = None  # Python: the (last) exception line; Java/Go: the header
    own_error: bool = False  # the record *is* the trace (no log line before it)
    read_ns: int = 0  # when the first line was read (the record's time if the line has none)


def start_state(text: str) -> tuple[str, bool]:
    """(state, is a trace of its own) for a line that starts a record."""
    c = text[:1]
    if c == "T" and text.startswith(PY_TRACEBACK):
        return "py_tb", True
    if c in ("p", "f") and _GO_START.match(text):
        return "go", True
    if c == "g" and _GOROUTINE.match(text):
        return "go", True
    if c == "E" and text.startswith("Exception in thread ") and _JAVA_HEADER.fullmatch(text):
        return "java", True
    return "log", False


def _blank(text: str) -> bool:
    return not text or text.isspace()


def continues(p: Pending, text: str, continuation: re.Pattern[str] | None) -> bool:
    """Does ``text`` continue ``p``? Updates ``p.state`` (not the lines: see :func:`append`)."""
    if p.count >= MAX_LINES or p.chars + len(text) > MAX_CHARS:
        return False
    if continuation is not None and continuation.match(text):
        return True
    state = p.state
    c = text[:1]
    if state == "log":
        if c == " " or c == "\t":
            if _blank(text):
                return False
            stripped = text.lstrip()
            if stripped.startswith("at ") or _JAVA_MORE.match(text):
                p.state = "java"
            return True
        if c == "C" and text.startswith("Caused by: "):
            p.state = "java"
            return True
        if c == "T" and text.startswith(PY_TRACEBACK) and _error_level(p.partial):
            p.state = "py_tb"
            return True
        if (
            p.count == 1
            and c.isalpha()
            and _JAVA_HEADER.fullmatch(text)
            and not text.startswith("Exception in")
        ):
            p.state = "java"
            p.exc_line = text
            return True
        return False
    if state == "py_tb":
        if c == " " or c == "\t" or _blank(text) or text.startswith(PY_TRACEBACK):
            return True
        p.state = "py_exc"
        p.exc_line = text
        return True
    if state == "py_exc":
        if _blank(text):
            p.state = "py_gap"
            return True
        if text.startswith(_PY_CHAIN):
            p.state = "py_chain"
            return True
        return c == " " or c == "\t"
    if state in ("py_gap", "py_chain"):
        if _blank(text):
            return True
        if text.startswith(_PY_CHAIN):
            p.state = "py_chain"
            return True
        if text.startswith(PY_TRACEBACK):
            p.state = "py_tb"
            return True
        return False
    if state == "java":
        if (c == " " or c == "\t") and not _blank(text):
            return True
        return text.startswith(("Caused by: ", "Suppressed: "))
    if state == "go":
        return _blank(text) or c == "\t" or c == " " or _GO_LINE.fullmatch(text) is not None
    return False


def _error_level(partial: Partial) -> bool:
    level = partial.get("log.level")
    return isinstance(level, str) and level.lower() in _ERROR_LEVELS


def append(p: Pending, text: str, original: str, count: int, deadline: float) -> None:
    """Add a continuation line (after :func:`continues` said yes)."""
    p.lines.append(text)
    p.originals.append(original)
    p.count += count
    p.chars += len(text)
    p.deadline = deadline


def finish(p: Pending) -> Partial:
    """The joined partial record: error.* from the trace, message kept or extended."""
    out = p.partial
    if not p.lines:
        if p.own_error:
            _error_fields(p, out, p.first)
        return out
    # Trailing blank lines (the gap before a chain that never came) belong to no one else.
    lines = p.lines
    while lines and _blank(lines[-1]):
        lines = lines[:-1]
    body = "\n".join(lines)
    if p.state == "log":
        out["message"] = (
            f"{out.get('message', p.first)}\n{body}" if body else out.get("message", p.first)
        )
        return out
    trace = f"{p.first}\n{body}" if p.own_error else body
    out["error.stack_trace"] = trace
    _error_fields(p, out, trace)
    return out


def _error_fields(p: Pending, out: Partial, trace: str) -> None:
    state = p.state
    if state.startswith("py"):
        line = p.exc_line
        if line is not None:
            m = _PY_EXC.fullmatch(line.strip())
            if m is not None:
                out["error.type"] = m.group(1)
                if m.group(2) is not None:
                    out["error.message"] = m.group(2)
            else:
                out["error.message"] = line
            if p.own_error:
                out["message"] = line
        if p.own_error:
            out.setdefault("log.level", "error")
        return
    if state == "java":
        header = p.exc_line if p.exc_line is not None else (p.first if p.own_error else None)
        if header is None:
            for line in p.lines:
                if not line[:1].isspace():
                    header = line.removeprefix("Caused by: ")
                    break
        if header is not None:
            m = _JAVA_HEADER.fullmatch(header)
            if m is not None:
                out["error.type"] = m.group("type")
                if m.group("msg") is not None:
                    out["error.message"] = m.group("msg")
                if m.group("thread") is not None:
                    out.setdefault("process.thread.name", m.group("thread"))
        if p.own_error:
            out.setdefault("log.level", "error")
        return
    if state == "go":
        m = _GO_START.match(p.first)
        if m is not None:
            out["error.type"] = m.group("type")
            out["error.message"] = m.group("msg")
        else:
            out["error.type"] = "goroutine dump"
        if p.own_error:
            out.setdefault("log.level", "fatal" if m is not None else "info")
            if "error.stack_trace" not in out:
                out["error.stack_trace"] = trace
