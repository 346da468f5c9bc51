"""Splitting a byte stream into lines, with a hard limit on line length.

Pure: bytes in, ``Lines`` out, no I/O, so it is tested as tables and with
hypothesis. Every input byte ends up in exactly one ``Line`` (its ``data``
plus its ``eol``), so the concatenation of all lines is the input: nothing is
lost, nothing repeated.

Speed: a feed's lines are kept as one list of ``bytes`` (``Lines.data``, what
the pipeline takes), split by ``bytes.split`` in C; the length limit and CRLF
are checked for the whole read at once (``max(map(len, ...))``, one ``memchr``
for a CR), and only a read that has an over-long line or a CR takes the
line-by-line path. ``Line`` objects are made only when a caller indexes or
iterates a ``Lines`` (the tests do; the dispatcher does not).

The limit (``max_line_bytes``, 64 KiB by default, the same order as Fluent
Bit's ``Buffer_Max_Size`` and the CRI runtime's 16 KiB partial lines) bounds
the memory one line can take: an app printing a 1 GiB line without a newline
must not take the adapter's memory with it. A longer line is cut into pieces
of at most ``max_line_bytes`` bytes, each marked ``truncated``; a cut never
splits a UTF-8 sequence when it can be avoided, so each piece decodes on its
own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

__all__ = ["DEFAULT_MAX_LINE_BYTES", "MIN_MAX_LINE_BYTES", "Line", "LineSplitter", "Lines"]

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


class Lines(Sequence[Line]):
    """The lines one ``feed`` (or ``eof``) completed.

    ``data`` holds each line's bytes; ``truncated`` the indexes of pieces of over-long
    lines; ``eols`` the line endings that are not ``b"\\n"`` (by index).
    """

    __slots__ = ("data", "eols", "truncated")

    def __init__(
        self,
        data: list[bytes] | None = None,
        truncated: set[int] | None = None,
        eols: dict[int, bytes] | None = None,
    ) -> None:
        self.data: list[bytes] = data if data is not None else []
        self.truncated: set[int] = truncated if truncated is not None else set()
        self.eols: dict[int, bytes] = eols if eols is not None else {}

    def append(self, data: bytes, truncated: bool, eol: bytes) -> None:
        i = len(self.data)
        self.data.append(data)
        if truncated:
            self.truncated.add(i)
        if eol != b"\n":
            self.eols[i] = eol

    def __len__(self) -> int:
        return len(self.data)

    def _line(self, i: int) -> Line:
        return Line(self.data[i], i in self.truncated, self.eols.get(i, b"\n"))

    @overload
    def __getitem__(self, index: int) -> Line: ...

    @overload
    def __getitem__(self, index: slice) -> list[Line]: ...

    def __getitem__(self, index: int | slice) -> Line | list[Line]:
        if isinstance(index, slice):
            return [self._line(i) for i in range(len(self.data))[index]]
        if index < 0:
            index += len(self.data)
        if not 0 <= index < len(self.data):
            raise IndexError(index)
        return self._line(index)

    def __iter__(self) -> Iterator[Line]:
        return (self._line(i) for i in range(len(self.data)))

    def __repr__(self) -> str:
        return f"Lines({list(self)!r})"


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

    def feed(self, data: bytes | bytearray) -> Lines:
        """Lines completed by ``data`` (and pieces of lines that grew too long)."""
        out = Lines()
        if not data:
            return out
        limit = self.max_line_bytes
        buf = self._buf
        if b"\n" not in data:
            buf += data
            self._cut_long(out)
            return out
        if buf:
            buf += data
            chunk = bytes(buf)
            buf.clear()
        else:
            chunk = bytes(data)
        parts = chunk.split(b"\n")
        rest = parts.pop()
        if not self._in_long_line and b"\r" not in chunk and max(map(len, parts)) <= limit:
            out.data = parts  # the common case: every line whole, LF-terminated
        else:
            for part in parts:
                if part.endswith(b"\r"):
                    part, eol = part[:-1], b"\r\n"
                else:
                    eol = b"\n"
                if len(part) <= limit and not self._in_long_line:
                    out.append(part, False, eol)
                else:
                    self._emit_long(part, eol, out)
        buf += rest
        self._cut_long(out)
        return out

    def eof(self) -> Lines:
        """The last, unterminated line (if any); the splitter is then empty."""
        out = Lines()
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
            out.append(part, False, eol)
        else:
            self._emit_long(part, eol, out)
        return out

    def _emit_long(self, part: bytes, eol: bytes, out: Lines) -> None:
        """Emit the rest of an over-long line as truncated pieces, the last with ``eol``."""
        if not self._in_long_line:
            self.truncated_lines += 1
        limit = self.max_line_bytes
        while len(part) > limit:
            k = _cut_point(part, limit)
            out.append(part[:k], True, b"")
            part = part[k:]
        out.append(part, True, eol)
        self._in_long_line = False

    def _cut_long(self, out: Lines) -> None:
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
            out.append(bytes(buf[:k]), True, b"")
            del buf[:k]
