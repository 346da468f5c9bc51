"""Splitting a byte stream into lines, with a hard limit on line length.

Pure: bytes in, ``Line`` values out, no I/O, so it is tested as tables and
with hypothesis. Every input byte ends up in exactly one ``Line`` (its
``data`` plus its ``eol``), so the concatenation of all lines is the input:
nothing is lost, nothing repeated.

The limit (``max_line_bytes``, 64 KiB by default, the same order as Fluent
Bit's ``Buffer_Max_Size`` and the CRI runtime's 16 KiB partial lines) bounds
the memory one line can take: an app printing a 1 GiB line without a newline
must not take the adapter's memory with it. A longer line is cut into pieces
of at most ``max_line_bytes`` bytes, each marked ``truncated``; a cut never
splits a UTF-8 sequence when it can be avoided, so each piece decodes on its
own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_LINE_BYTES", "MIN_MAX_LINE_BYTES", "Line", "LineSplitter"]

#: 64 KiB: far above any sane log line, small enough to bound memory per stream.
DEFAULT_MAX_LINE_BYTES = 64 * 1024
#: A cut must leave room for a whole UTF-8 sequence (4 bytes) and a useful piece.
MIN_MAX_LINE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Line:
    """One line (or one piece of an over-long line) without its line ending.

    ``eol`` is what followed ``data`` in the input: ``b"\\n"``, ``b"\\r\\n"``,
    ``b""`` (a piece cut from a longer line, or the last line at EOF) or
    ``b"\\r"`` (a lone CR at EOF). ``truncated`` marks every piece of a line
    longer than the limit, including its last piece.
    """

    data: bytes
    truncated: bool = False
    eol: bytes = b"\n"


def _cut_point(buf: bytes | bytearray, limit: int) -> int:
    """Where to cut ``buf`` (longer than ``limit``) so as not to split a UTF-8 character."""
    k = limit
    # Step back over up to three continuation bytes (10xxxxxx) to the lead byte.
    while k > limit - 3 and k > 0 and (buf[k] & 0xC0) == 0x80:
        k -= 1
    if k > 0 and k != limit and buf[k] >= 0xC0:
        return k  # the whole character moves into the next piece
    return limit


class LineSplitter:
    """Incremental splitter: ``feed`` chunks as they arrive, ``eof`` at the end.

    ``pending_bytes`` is how many fed bytes are held back waiting for the end
    of their line; the tail input uses it to checkpoint the offset of the
    first byte it has not yet handed on.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < MIN_MAX_LINE_BYTES:
            raise ValueError(f"max_line_bytes must be >= {MIN_MAX_LINE_BYTES}")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._in_long_line = False  # pieces of the current line were already emitted
        self.truncated_lines = 0  # lines that were cut into pieces, each counted once

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    @property
    def in_long_line(self) -> bool:
        return self._in_long_line

    def feed(self, data: bytes | bytearray) -> list[Line]:
        """Lines completed by ``data`` (and pieces of lines that grew too long)."""
        out: list[Line] = []
        if not data:
            return out
        limit = self.max_line_bytes
        buf = self._buf
        if b"\n" not in data:
            buf += data
            self._cut_long(out)
            return out
        buf += data
        parts = bytes(buf).split(b"\n")
        rest = parts.pop()
        buf.clear()
        for part in parts:
            if part.endswith(b"\r"):
                part, eol = part[:-1], b"\r\n"
            else:
                eol = b"\n"
            if len(part) <= limit and not self._in_long_line:
                out.append(Line(part, False, eol))
            else:
                self._emit_long(part, eol, out)
        buf += rest
        self._cut_long(out)
        return out

    def eof(self) -> list[Line]:
        """The last, unterminated line (if any); the splitter is then empty."""
        out: list[Line] = []
        if not self._buf and not self._in_long_line:
            return out
        part = bytes(self._buf)
        self._buf.clear()
        eol = b""
        if part.endswith(b"\r"):
            part, eol = part[:-1], b"\r"
        if not part and not eol:
            # The line ended exactly at a cut: its pieces are already out.
            self._in_long_line = False
            return out
        if len(part) <= self.max_line_bytes and not self._in_long_line:
            out.append(Line(part, False, eol))
        else:
            self._emit_long(part, eol, out)
        return out

    def _emit_long(self, part: bytes, eol: bytes, out: list[Line]) -> None:
        """Emit the rest of an over-long line as truncated pieces, the last with ``eol``."""
        if not self._in_long_line:
            self.truncated_lines += 1
        limit = self.max_line_bytes
        while len(part) > limit:
            k = _cut_point(part, limit)
            out.append(Line(part[:k], True, b""))
            part = part[k:]
        out.append(Line(part, True, eol))
        self._in_long_line = False

    def _cut_long(self, out: list[Line]) -> None:
        """Cut pieces off a buffered, still unterminated line that grew past the limit."""
        buf = self._buf
        limit = self.max_line_bytes
        while len(buf) > limit:
            # A CR right after the limit may be the first half of a CRLF: wait for it.
            if len(buf) == limit + 1 and buf[-1] == 0x0D:
                break
            k = _cut_point(buf, limit)
            if not self._in_long_line:
                self.truncated_lines += 1
                self._in_long_line = True
            out.append(Line(bytes(buf[:k]), True, b""))
            del buf[:k]
