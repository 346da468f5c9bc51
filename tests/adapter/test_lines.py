"""The line splitter: tables of edge cases, then hypothesis for "no byte lost or repeated"."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.lines import Line, LineSplitter


def split_all(chunks: list[bytes], limit: int = 16) -> list[Line]:
    splitter = LineSplitter(limit)
    out: list[Line] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    out += splitter.eof()
    assert splitter.pending_bytes == 0
    return out


def as_tuples(lines: Iterable[Line]) -> list[tuple[bytes, bool, bytes]]:
    return [(line.data, line.truncated, line.eol) for line in lines]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b""], []),
        ([b"a\n"], [(b"a", False, b"\n")]),
        ([b"a\nb\n"], [(b"a", False, b"\n"), (b"b", False, b"\n")]),
        ([b"a", b"b", b"\n"], [(b"ab", False, b"\n")]),
        ([b"\n\n"], [(b"", False, b"\n"), (b"", False, b"\n")]),
        ([b"a\r\nb\r\n"], [(b"a", False, b"\r\n"), (b"b", False, b"\r\n")]),
        # CRLF split across two reads is still one line ending.
        ([b"a\r", b"\nb"], [(b"a", False, b"\r\n"), (b"b", False, b"")]),
        # A CR in the middle of a line is data.
        ([b"a\rb\n"], [(b"a\rb", False, b"\n")]),
        # The last line without a newline comes out at EOF.
        ([b"x\npartial"], [(b"x", False, b"\n"), (b"partial", False, b"")]),
        ([b"lone cr\r"], [(b"lone cr", False, b"\r")]),
        # Exactly the limit (16 bytes) is not truncated, with or without CRLF.
        ([b"0123456789abcdef\n"], [(b"0123456789abcdef", False, b"\n")]),
        ([b"0123456789abcdef\r", b"\n"], [(b"0123456789abcdef", False, b"\r\n")]),
        # One byte over: two pieces, both truncated; the newline goes with the last.
        (
            [b"0123456789abcdefg\n"],
            [(b"0123456789abcdef", True, b""), (b"g", True, b"\n")],
        ),
        # The same, arriving byte by byte: the first piece is out before the newline.
        (
            [bytes([c]) for c in b"0123456789abcdefg\n"],
            [(b"0123456789abcdef", True, b""), (b"g", True, b"\n")],
        ),
        # A long line without a newline at EOF.
        (
            [b"0123456789abcdef0123456789abcdef01"],
            [
                (b"0123456789abcdef", True, b""),
                (b"0123456789abcdef", True, b""),
                (b"01", True, b""),
            ],
        ),
        # A cut does not split a UTF-8 character (e-acute is two bytes).
        (
            ["012345678901234é.\n".encode()],
            [(b"012345678901234", True, b""), ("é.".encode(), True, b"\n")],
        ),
    ],
)
def test_splits(chunks: list[bytes], expected: list[tuple[bytes, bool, bytes]]) -> None:
    assert as_tuples(split_all(chunks)) == expected


def test_first_piece_of_long_line_is_out_before_its_newline() -> None:
    splitter = LineSplitter(16)
    pieces = splitter.feed(b"x" * 40)
    assert [p.data for p in pieces] == [b"x" * 16, b"x" * 16]
    assert splitter.pending_bytes == 8
    assert splitter.in_long_line
    assert as_tuples(splitter.feed(b"\nnext\n")) == [
        (b"x" * 8, True, b"\n"),
        (b"next", False, b"\n"),
    ]
    assert splitter.truncated_lines == 1


def test_limit_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError):
        LineSplitter(4)


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


_bytes = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"a", b"\n", b"\r", b"\r\n", "é".encode(), "€".encode(), b"\xff", b"xyz"]),
    max_size=120,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    data=_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    limit=st.integers(min_value=16, max_value=40),
)
def test_no_byte_lost_or_repeated(data: bytes, cuts: list[int], limit: int) -> None:
    lines = split_all(_chunked(data, cuts), limit)
    # Every byte is in exactly one line: data + eol concatenated is the input.
    assert b"".join(line.data + line.eol for line in lines) == data
    # No piece exceeds the limit; no line data contains a newline.
    assert all(len(line.data) <= limit and b"\n" not in line.data for line in lines)
    # How the input was chunked changes nothing.
    assert as_tuples(lines) == as_tuples(split_all([data], limit))
    # Only the last line may lack a line ending, unless it is a cut piece.
    for line in lines[:-1]:
        assert line.eol in (b"\n", b"\r\n") or (line.truncated and line.eol == b"")


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")), max_size=20))
def test_truncated_exactly_when_longer_than_limit(lines: list[bytes]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    out = split_all([data], 16)
    rebuilt: list[bytes] = []
    current = b""
    for piece in out:
        current += piece.data + (b"\r" if piece.eol == b"\r\n" else b"")
        whole = lines[len(rebuilt)]
        stripped = whole[:-1] if whole.endswith(b"\r") else whole
        assert piece.truncated == (len(stripped) > 16)
        if piece.eol:
            rebuilt.append(current)
            current = b""
    assert rebuilt == lines


@settings(max_examples=200, deadline=None)
@given(
    data=_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    limit=st.integers(min_value=16, max_value=40),
)
def test_a_batch_holds_its_lines(data: bytes, cuts: list[int], limit: int) -> None:
    """Lines keeps the bytes in one list (what the pipeline takes) and the marks beside it."""
    splitter = LineSplitter(limit)
    for chunk in _chunked(data, cuts):
        batch = splitter.feed(chunk)
        lines = list(batch)
        assert batch.data == [line.data for line in lines]
        assert batch.truncated == {i for i, line in enumerate(lines) if line.truncated}
        assert len(batch) == len(lines)
        assert [batch[i] for i in range(-len(lines), len(lines))] == lines + lines
        assert batch[1:] == lines[1:]


def test_whole_lines_take_the_fast_path_and_keep_their_bytes() -> None:
    batch = LineSplitter(16).feed(b"one\ntwo\n\nthree")
    assert batch.data == [b"one", b"two", b""] and not batch.truncated and not batch.eols
    with pytest.raises(IndexError):
        batch[3]
