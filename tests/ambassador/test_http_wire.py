"""HTTP/1.1 framing (``ambassador.http.wire``): smuggling tables, events, round trips. Pure."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ambassador.http.wire import (
    CLOSED,
    END,
    LAST_CHUNK,
    BadRequest,
    BadResponse,
    Framing,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    frame_chunk,
    request_head,
    response_head,
)


def events(reader: RequestReader | ResponseReader, *chunks: bytes) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (event := reader.next_event()) is not None:
            out.append(event)
    return out


def parse_request(*chunks: bytes, limit: int = 16384) -> list[object]:
    return events(RequestReader(limit), *chunks)


# --------------------------------------------------------------------------- smuggling

SMUGGLING = {
    "CL and TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE and CL": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n0\r\n\r\n",
    "CL not a number": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc",
    "CL negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc",
    "CL with plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "CL list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "CL duplicated, same": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "CL duplicated, different": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "obs-fold TE": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF in a header": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "space before colon": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
    "whitespace before a name": b"GET / HTTP/1.1\r\nHost: a\r\n X: y\r\n\r\n",
    "TE not chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "TE chunked not last": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\nabc",
    "TE xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\nabc",
    "TE duplicated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk size not hex": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3x\r\nabc\r\n0\r\n\r\n",
    "chunk line bare LF": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\nabc\n0\n\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/2.0 request line": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_or_invalid_framing_is_400_and_nothing_is_forwarded(raw: bytes) -> None:
    out = parse_request(raw)
    # Nothing of the broken request is handed on (not even a head parsed before
    # the framing was found invalid), only the error.
    assert len(out) == 1, out
    error = out[0]
    assert isinstance(error, BadRequest)
    assert error.status == 400


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_is_caught_byte_by_byte(raw: bytes) -> None:
    """The same verdict when the request trickles in one byte per read."""
    out = parse_request(*(raw[i : i + 1] for i in range(len(raw))))
    assert isinstance(out[-1], BadRequest)
    # Only a broken chunk (after a valid head) may follow a head.
    assert not any(isinstance(e, RequestHead) for e in out) or b"chunked\r\n\r\n3" in raw


def test_error_after_a_complete_request_keeps_that_request() -> None:
    good = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    out = parse_request(good + SMUGGLING["CL and TE"])
    assert isinstance(out[0], RequestHead) and out[0].target == b"/a"
    assert out[1] is END
    assert isinstance(out[2], BadRequest)
    assert len(out) == 3


def test_nothing_after_an_error() -> None:
    reader = RequestReader(16384)
    assert isinstance(events(reader, b"garbage\r\n\r\n")[0], BadRequest)
    assert events(reader, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []


# --------------------------------------------------------------------------- requests


def test_pipelined_requests_with_bodies_in_order() -> None:
    raw = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    )
    out = parse_request(raw[:50], raw[50:])
    heads = [e for e in out if isinstance(e, RequestHead)]
    assert [(h.method, h.target, h.framing) for h in heads] == [
        (b"GET", b"/1", Framing.NONE),
        (b"POST", b"/2", Framing.LENGTH),
        (b"PUT", b"/3", Framing.CHUNKED),
    ]
    assert heads[1].content_length == 5
    body = b"".join(e for e in out if isinstance(e, bytes))
    assert body == b"helloabcde"  # de-chunked, trailers dropped
    assert sum(1 for e in out if e is END) == 3


def test_head_fields() -> None:
    (head, end) = parse_request(
        b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Mixed-Case: V\r\nExpect: 100-continue\r\n\r\n"
    )
    assert isinstance(head, RequestHead) and end is END
    assert head.headers == [(b"host", b"a"), (b"x-mixed-case", b"V"), (b"expect", b"100-continue")]
    assert head.version == "1.1" and head.keep_alive and head.expect_continue
    assert not head.upgrade
    assert head.size == len(b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Mixed-Case: V\r\n") + len(
        b"Expect: 100-continue\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive(raw: bytes, keep_alive: bool) -> None:
    head = parse_request(raw)[0]
    assert isinstance(head, RequestHead) and head.keep_alive is keep_alive


def test_upgrade_keeps_the_raw_bytes_after_the_head() -> None:
    reader = RequestReader(16384)
    out = events(
        reader,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nRAW",
    )
    head = out[0]
    assert isinstance(head, RequestHead) and head.upgrade
    assert out[1:] == [END]
    assert reader.switched and reader.trailing == b"RAW"
    assert events(reader, b"MORE") == [] and reader.trailing == b"RAWMORE"


def test_eof() -> None:
    assert parse_request(b"") == [CLOSED]
    out = parse_request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc", b"")
    assert out[1:] == [b"abc", CLOSED]


def test_header_section_limit_is_431() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    (error,) = parse_request(big, limit=1024)
    assert isinstance(error, BadRequest) and error.status == 431
    (head, _) = parse_request(big, limit=4096)
    assert isinstance(head, RequestHead)


def test_a_never_ending_header_is_cut_off() -> None:
    """A head that never completes is refused once it exceeds the limit plus one read."""
    reader = RequestReader(1024)
    out = events(reader, b"GET / HTTP/1.1\r\nX-Endless: ")
    piece = b"a" * 8192
    for _ in range(20):
        out += events(reader, piece)
        if out:
            break
    assert len(out) == 1 and isinstance(out[0], BadRequest) and out[0].status == 431


# --------------------------------------------------------------------------- responses


def parse_response(method: bytes, *chunks: bytes) -> tuple[ResponseReader, list[object]]:
    reader = ResponseReader(65536)
    reader.start(method)
    return reader, events(reader, *chunks)


def test_response_with_length_and_keep_alive() -> None:
    _, out = parse_response(
        b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhel", b"lo"
    )
    head = out[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.framing, head.keep_alive) == (
        200,
        b"OK",
        Framing.LENGTH,
        True,
    )
    assert head.headers == [(b"content-length", b"5"), (b"server", b"x")]
    assert out[1:] == [b"hel", b"lo", END]


def test_response_to_head_has_no_body_whatever_it_says() -> None:
    reader, out = parse_response(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n")
    assert isinstance(out[0], ResponseHead) and out[0].framing == Framing.NONE
    assert out[1:] == [END]
    assert not reader.stray
    # The next response on the connection parses (a fresh parser).
    reader.start(b"GET")
    assert events(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")[1:] == [b"ok", END]


def test_bytes_after_a_head_response_spoil_the_connection() -> None:
    reader, out = parse_response(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
    assert out[1:] == [END]
    assert reader.stray


def test_continue_then_final_response() -> None:
    _, out = parse_response(
        b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    statuses = [e.status for e in out if isinstance(e, ResponseHead)]
    assert statuses == [100, 201]
    assert sum(1 for e in out if e is END) == 2


def test_switching_protocols_keeps_the_tunnel_bytes() -> None:
    reader, out = parse_response(
        b"GET",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nhi",
    )
    assert isinstance(out[0], ResponseHead) and out[0].status == 101
    assert reader.switched and reader.trailing == b"hi"


def test_close_delimited_body_ends_at_eof() -> None:
    _, out = parse_response(b"GET", b"HTTP/1.1 200 OK\r\n\r\nabc", b"def", b"")
    head = out[0]
    assert isinstance(head, ResponseHead)
    assert head.framing == Framing.CLOSE and not head.keep_alive
    assert out[1:] == [b"abc", b"def", END, CLOSED]


def test_truncated_body_is_not_an_end() -> None:
    _, out = parse_response(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", b"")
    assert out[1:] == [b"partial", CLOSED]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    _, out = parse_response(b"GET", b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert isinstance(out[0], ResponseHead) and out[0].framing == Framing.NONE
    assert out[1:] == [END]


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-not-http\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
)
def test_invalid_responses(raw: bytes) -> None:
    _, out = parse_response(b"GET", raw)
    assert isinstance(out[-1], BadResponse)
    assert not any(isinstance(e, ResponseHead) for e in out)


# --------------------------------------------------------------------------- writing

_NAMES = st.from_regex(rb"\A[a-z][a-z0-9-]{0,15}\Z").filter(
    lambda n: n not in (b"content-length", b"transfer-encoding", b"connection", b"upgrade")
)
_VALUES = st.from_regex(rb"\A[!-~]([ !-~]{0,30}[!-~])?\Z")


@given(
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    chunks=st.lists(st.binary(min_size=1, max_size=50), max_size=5),
)
def test_written_messages_parse_back(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> None:
    framed = [(b"transfer-encoding", b"chunked"), *headers]
    raw = request_head(b"POST", b"/p?q=1", framed)
    raw += b"".join(frame_chunk(c) for c in chunks) + LAST_CHUNK
    out = parse_request(raw)
    head = out[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.headers) == (b"POST", b"/p?q=1", framed)
    assert b"".join(e for e in out if isinstance(e, bytes)) == b"".join(chunks)
    assert out[-1] is END

    body = b"".join(chunks)
    raw = response_head(200, b"OK", [*headers, (b"content-length", b"%d" % len(body))]) + body
    _, rout = parse_response(b"GET", raw)
    rhead = rout[0]
    assert isinstance(rhead, ResponseHead) and rhead.status == 200
    assert rhead.headers == [*headers, (b"content-length", b"%d" % len(body))]
    assert b"".join(e for e in rout if isinstance(e, bytes)) == body
    assert rout[-1] is END


# --------------------------------------------------------------------------- repeated heads


def _summary(events_: list[object]) -> list[object]:
    out: list[object] = []
    for e in events_:
        if isinstance(e, ResponseHead):
            out.append((e.status, e.reason, e.version, e.headers, e.keep_alive, e.framing))
        elif isinstance(e, BadResponse):
            out.append(("bad", e.reason))
        else:
            out.append(e)
    return out


_HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
]
_BODIES = [b"", b"hello", b"abc", b"5\r\nhello\r\n0\r\n\r\n", b"hell", b"hello!", b"x"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_HEADS),
            st.sampled_from(_BODIES),
            st.sampled_from([b"GET", b"HEAD"]),
            st.integers(min_value=0, max_value=200),
        ),
        min_size=1,
        max_size=6,
    )
)
@example(  # after a response that closes, llhttp takes nothing more: neither may the reuse
    [
        (_HEADS[2], b"abc", b"GET", 0),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello", b"GET", 0),
        (_HEADS[2], b"abc", b"GET", 0),
    ]
)
def test_a_repeated_head_reads_as_llhttp_reads_it(
    exchanges: list[tuple[bytes, bytes, bytes, int]],
) -> None:
    """Reusing the last head's event never changes what the reader says (llhttp's reference)."""
    memo, plain = ResponseReader(16384), ResponseReader(16384, memo=False)
    for head, body, method, cut in exchanges:
        raw = head + body
        got = []
        for reader in (memo, plain):
            reader.start(method)
            got.append(
                _summary(
                    events(reader, raw[:cut], raw[cut:]) if cut < len(raw) else events(reader, raw)
                )
            )
        assert got[0] == got[1]
        if memo.failed or plain.failed:
            break


def test_a_repeated_head_skips_llhttp() -> None:
    raw = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\n\r\nhello"
    reader = ResponseReader(16384)
    reader.start(b"GET")
    first = events(reader, raw)
    parser = reader._parser

    class Refuse:
        def feed_data(self, data: bytes) -> None:
            raise AssertionError("llhttp read a repeated head")

    reader._parser = Refuse()  # type: ignore[assignment]
    for body in (b"hello", b"world"):
        reader.start(b"GET")
        got = events(reader, raw[:-5] + body)
        assert got[0] is first[0] and got[1:] == [body, END]
    # A changed head is llhttp's again.
    reader._parser = parser
    reader.start(b"GET")
    head = events(reader, raw.replace(b"nginx", b"nginy"))[0]
    assert isinstance(head, ResponseHead)
    assert head.headers == [(b"server", b"nginy"), (b"content-length", b"5")]
