"""Header policy tables: hop-by-hop stripping, request id, trace context, Host, injected files."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambassador.http.headers import (
    HeaderFiles,
    IdSource,
    RequestTemplate,
    ResponseTemplate,
    is_upgrade_request,
    parse_traceparent,
    plan_request_headers,
    prepare_request_headers,
    prepare_response_headers,
    strip_hop_by_hop,
)
from ambassador.http.wire import request_head, response_head

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ids() -> IdSource:
    return IdSource(random.Random(7))


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n for n, _ in headers]


def value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = [v for n, v in headers if n == name]
    assert len(found) <= 1, f"{name!r} appears {len(found)} times"
    return found[0] if found else None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ([(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5")], []),
        ([(b"connection", b"close, x-private"), (b"x-private", b"1"), (b"x-a", b"2")], [b"x-a"]),
        ([(b"te", b"trailers"), (b"trailer", b"x"), (b"proxy-connection", b"keep-alive")], []),
        (
            [(b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"), (b"accept", b"*/*")],
            [b"accept"],
        ),
        ([(b"connection", b"X-Mixed-Case"), (b"x-mixed-case", b"1")], []),
        ([(b"authorization", b"Bearer x"), (b"cookie", b"a=b")], [b"authorization", b"cookie"]),
    ],
)
def test_strip_hop_by_hop(given: list[tuple[bytes, bytes]], kept: list[bytes]) -> None:
    assert names(strip_hop_by_hop(given)) == kept


def test_request_id_added_when_absent_kept_when_present() -> None:
    out = prepare_request_headers([(b"host", b"app")], ids=ids())
    rid = value(out.headers, b"x-request-id")
    assert rid is not None and rid.decode() == out.request_id and len(out.request_id) == 36
    mine = prepare_request_headers([(b"host", b"a"), (b"x-request-id", b"abc-123")], ids=ids())
    assert mine.request_id == "abc-123" and value(mine.headers, b"x-request-id") == b"abc-123"
    # A request id that would break a log line is replaced.
    bad = prepare_request_headers([(b"x-request-id", b"a b\x01")], ids=ids())
    assert bad.request_id != "a b\x01" and len(bad.request_id) == 36


def test_traceparent_continued_with_new_span() -> None:
    out = prepare_request_headers([(b"traceparent", TP), (b"tracestate", b"k=v")], ids=ids())
    tp = value(out.headers, b"traceparent")
    assert tp is not None
    version, trace, span, flags = tp.decode().split("-")
    assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span != "00f067aa0ba902b7" and len(span) == 16
    assert not out.trace.started and out.trace.span_id == span
    assert value(out.headers, b"tracestate") == b"k=v"


@pytest.mark.parametrize(
    "bad",
    [
        b"garbage",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has 4 fields
    ],
)
def test_invalid_traceparent_starts_a_new_trace(bad: bytes) -> None:
    out = prepare_request_headers([(b"traceparent", bad), (b"tracestate", b"k=v")], ids=ids())
    assert out.trace.started
    tp = value(out.headers, b"traceparent")
    assert tp is not None and parse_traceparent(tp) is not None
    assert value(out.headers, b"tracestate") is None  # dropped with an invalid parent


def test_future_traceparent_version_is_accepted() -> None:
    future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
    assert parse_traceparent(future) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "01",
    )


@given(st.binary(max_size=80))
def test_parse_traceparent_never_raises(data: bytes) -> None:
    parsed = parse_traceparent(data)
    if parsed is not None:
        assert len(parsed[0]) == 32 and len(parsed[1]) == 16


def test_host_and_injected_headers() -> None:
    out = prepare_request_headers(
        [(b"host", b"localhost:8080"), (b"authorization", b"Bearer app-has-none"), (b"x", b"1")],
        ids=ids(),
        injected=[(b"authorization", b"Bearer from-secret")],
        upstream_host=b"api.prod.internal",
    )
    assert value(out.headers, b"host") == b"api.prod.internal"
    assert value(out.headers, b"authorization") == b"Bearer from-secret"
    assert value(out.headers, b"x") == b"1"
    kept = prepare_request_headers([(b"host", b"localhost:8080")], ids=ids())
    assert value(kept.headers, b"host") == b"localhost:8080"
    http10 = prepare_request_headers([], ids=ids(), default_host=b"10.0.0.1:80")
    assert value(http10.headers, b"host") == b"10.0.0.1:80"


def test_chunked_framing_survives_the_strip() -> None:
    out = prepare_request_headers(
        [(b"host", b"a"), (b"transfer-encoding", b"chunked"), (b"te", b"trailers")], ids=ids()
    )
    assert value(out.headers, b"transfer-encoding") == b"chunked"
    assert value(out.headers, b"te") is None
    sized = prepare_request_headers([(b"host", b"a"), (b"content-length", b"3")], ids=ids())
    assert value(sized.headers, b"content-length") == b"3"
    assert value(sized.headers, b"transfer-encoding") is None


def test_upgrade_kept_for_a_protocol_switch() -> None:
    req = [
        (b"host", b"a"),
        (b"connection", b"keep-alive, Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    assert is_upgrade_request(req)
    out = prepare_request_headers(req, ids=ids())
    assert out.upgrade
    assert value(out.headers, b"upgrade") == b"websocket"
    assert value(out.headers, b"connection") == b"upgrade"
    assert value(out.headers, b"sec-websocket-key") is not None
    # Upgrade without Connection naming it is not a switch: stripped.
    plain = prepare_request_headers([(b"host", b"a"), (b"upgrade", b"websocket")], ids=ids())
    assert not plain.upgrade and value(plain.headers, b"upgrade") is None


def test_response_headers() -> None:
    up = [
        (b"content-length", b"2"),
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"x-app", b"1"),
    ]
    out = prepare_response_headers(up, request_id="rid-1")
    assert names(out) == [b"content-length", b"x-app", b"x-request-id"]
    closing = prepare_response_headers(up, request_id="rid-1", close=True)
    assert value(closing, b"connection") == b"close"
    own = prepare_response_headers([(b"x-request-id", b"theirs")], request_id="rid-1")
    assert value(own, b"x-request-id") == b"theirs"
    switching = prepare_response_headers(
        [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", b"x")],
        request_id="r",
        switching=True,
    )
    assert value(switching, b"upgrade") == b"websocket"
    assert value(switching, b"connection") == b"upgrade"


def test_header_files_reread_on_change(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    files = HeaderFiles([("Authorization", secret)], check_interval=1.0)
    assert files.current(0.0) == []
    assert "authorization" in files.problems
    secret.write_text("Bearer one\n")
    assert files.current(0.5) == []  # not re-checked within the interval
    assert files.current(1.0) == [(b"authorization", b"Bearer one")]
    assert files.problems == {}
    # A Kubernetes Secret update: new file swapped in atomically.
    new = tmp_path / "token.new"
    new.write_text("Bearer two")
    os.replace(new, secret)
    assert files.current(2.0) == [(b"authorization", b"Bearer two")]
    reloads = files.reloads
    assert files.current(3.0) == [(b"authorization", b"Bearer two")]
    assert files.reloads == reloads  # unchanged file: not read again
    secret.write_text("line one\nline two\n")
    assert files.current(4.0) == []  # a header value cannot hold a newline
    assert "authorization" in files.problems


_names = st.sampled_from(
    [b"connection", b"keep-alive", b"te", b"trailer", b"upgrade", b"transfer-encoding",
     b"proxy-connection", b"x-request-id", b"traceparent", b"tracestate", b"host",
     b"content-length", b"x-a", b"x-b", b"authorization"]
)  # fmt: skip
_values = st.sampled_from(
    [b"close", b"x-a", b"upgrade", b"websocket", b"chunked", b"1", b"", TP, b"k=v, x-b"]
)


@given(st.lists(st.tuples(_names, _values), max_size=12))
def test_request_policy_invariants(headers: list[tuple[bytes, bytes]]) -> None:
    """Whatever the app sends: one request id, one valid traceparent, one Host at most,
    injected values win, and no hop-by-hop header survives unless it frames or upgrades."""
    out = prepare_request_headers(
        headers, ids=ids(), injected=[(b"authorization", b"Bearer injected")]
    )
    got = out.headers
    assert names(got).count(b"x-request-id") == 1
    assert names(got).count(b"traceparent") == 1
    tp = value(got, b"traceparent")
    assert tp is not None and parse_traceparent(tp) is not None
    assert names(got).count(b"host") <= 1
    assert value(got, b"authorization") == b"Bearer injected"
    named = {t.strip().lower() for n, v in headers if n == b"connection" for t in v.split(b",")}
    for name in names(got):
        if name in (b"connection", b"upgrade"):
            assert out.upgrade
        elif name == b"transfer-encoding":
            assert value(got, name) == b"chunked"
        else:
            assert name not in {b"keep-alive", b"te", b"trailer", b"proxy-connection"}
            injected_or_ours = name in (b"authorization", b"x-request-id", b"traceparent", b"host")
            assert injected_or_ours or name not in named


@given(st.integers(min_value=0, max_value=2**32))
def test_ids_are_the_uuid4_and_hex_strings_of_one_draw(seed: int) -> None:
    # The request id is formatted without a uuid.UUID object (per-request cost);
    # it must be exactly what str(uuid.UUID(int=bits, version=4)) gives, and the
    # trace and span ids the next bits of the same draw.
    ids, rng = IdSource(random.Random(seed)), random.Random(seed)
    for _ in range(5):
        rid, trace, span = ids.draw()
        n = rng.getrandbits(320)
        assert rid == str(uuid.UUID(int=n >> 192, version=4))
        assert uuid.UUID(rid).version == 4
        assert trace == f"{(n >> 64) & ((1 << 128) - 1):032x}"
        assert span == f"{n & ((1 << 64) - 1):016x}"


def test_ids_are_never_all_zero_trace_or_span() -> None:
    class Zeros(random.Random):
        """Draws all-zero bits first, then ones: the ids must skip the zeros."""

        calls = 0

        def getrandbits(self, k: int) -> int:
            self.calls += 1
            return 0 if self.calls == 1 else (1 << k) - 1

    rid, trace, span = IdSource(Zeros()).draw()
    assert uuid.UUID(rid).version == 4
    assert trace == "f" * 32 and span == "f" * 16


# --------------------------------------------------------------------------- templates


@given(
    st.lists(st.tuples(_names, _values), max_size=12),
    st.sampled_from([(), ((b"authorization", b"Bearer injected"),)]),
    st.sampled_from([None, b"api.internal"]),
    st.integers(min_value=0, max_value=2**32),
)
def test_request_template_renders_what_the_policy_writes(
    headers: list[tuple[bytes, bytes]],
    injected: tuple[tuple[bytes, bytes], ...],
    upstream_host: bytes | None,
    seed: int,
) -> None:
    """The fast lane's template gives, request after request, the very bytes of the policy."""
    headers = [(b"host", b"app"), *headers]
    plan = plan_request_headers(
        headers, injected=list(injected), upstream_host=upstream_host, request_id_header=b"x-rid"
    )
    template = RequestTemplate(headers, list(injected), plan, b"x-rid")
    assert template.has_host
    assert template.matches(list(headers), list(injected))
    assert not template.matches([*headers, (b"x-more", b"1")], list(injected))
    ours, theirs = IdSource(random.Random(seed)), IdSource(random.Random(seed))
    for target in (b"/a", b"/b?c=d"):
        head, request_id, trace = template.render(b"GET", target, ours)
        want = prepare_request_headers(
            headers,
            ids=theirs,
            injected=list(injected),
            upstream_host=upstream_host,
            request_id_header=b"x-rid",
        )
        assert head == request_head(b"GET", target, want.headers)
        assert (request_id, trace) == (want.request_id, want.trace)
        assert template.prepared(request_id, trace) == want


_response_names = st.sampled_from(
    [b"content-type", b"content-length", b"connection", b"keep-alive", b"x-request-id",
     b"transfer-encoding", b"upgrade", b"date", b"x-a"]
)  # fmt: skip


@given(
    st.lists(st.tuples(_response_names, _values), max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_response_template_renders_what_the_policy_writes(
    headers: list[tuple[bytes, bytes]], close: bool, chunked: bool
) -> None:
    template = ResponseTemplate(200, b"OK", headers, b"x-request-id", close=close, chunked=chunked)
    assert template.matches(200, b"OK", list(headers), close=close, chunked=chunked)
    assert not template.matches(200, b"OK", list(headers), close=not close, chunked=chunked)
    assert not template.matches(404, b"OK", list(headers), close=close, chunked=chunked)
    for request_id in ("r-1", "r-2"):
        want = prepare_response_headers(headers, request_id=request_id, close=close)
        if chunked:
            want.append((b"transfer-encoding", b"chunked"))
        assert template.render(request_id) == response_head(200, b"OK", want)
