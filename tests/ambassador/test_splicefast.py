"""The relay hub's C path (``ambassador/_splicefast.c``) on its own, with real loopback sockets.

It exists in the compiled build only (scripts/compiled.py, setup.py);
test_compiled.py checks that it is there exactly in that run, so each run
tests the hub it ships. A connection here is what the hub hands it: the two sockets the
ambassador holds (``near`` ends), registered in an epoll set and in the table,
with the app and the backend at the ``far`` ends.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from ambassador import fastrelay

sf = pytest.importorskip(
    "ambassador._splicefast",
    reason="built in the compiled run (test_compiled.py checks where it must be)",
)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(far, near) ends of a loopback TCP connection; near is non-blocking."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        far = socket.create_connection(lst.getsockname())
        near, _ = lst.accept()
    near.setblocking(False)
    far.settimeout(5)
    return far, near


def rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Rig:
    """app ~ client ==table== upstream ~ backend, plus the epoll set and a spare pipe."""

    def __init__(self) -> None:
        self.sf = sf
        self.table = sf.Table()
        self.epoll = select.epoll()
        self.spare = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.socks: list[socket.socket] = []

    def connect(self) -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
        app, client = tcp_pair()
        backend, upstream = tcp_pair()
        self.socks += [app, client, backend, upstream]
        for near, peer in ((client, upstream), (upstream, client)):
            self.table.set(near.fileno(), peer.fileno())
            self.epoll.register(near.fileno(), select.EPOLLIN)
        return app, client, upstream, backend

    def poll(
        self, timeout_ms: int = 2000, chunk: int = 1 << 16, burst: int = 4, copy: int = 0
    ) -> list[tuple[int, int, int, int, int, int]]:
        return list(
            self.table.poll(self.epoll.fileno(), timeout_ms, *self.spare, chunk, burst, copy)
        )

    def spare_bytes(self) -> bytes:
        """What waits in the spare pipe (read out)."""
        try:
            return os.read(self.spare[0], 1 << 20)
        except BlockingIOError:
            return b""

    def spare_holds(self) -> int:
        """Bytes waiting in the spare pipe (read out)."""
        return len(self.spare_bytes())

    def close(self) -> None:
        self.epoll.close()
        os.close(self.spare[0])
        os.close(self.spare[1])
        for s in self.socks:
            s.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def test_the_simple_event_is_forwarded_and_counted_with_nothing_handed_back(rig: Rig) -> None:
    app, client, upstream, backend = rig.connect()
    before = time.perf_counter()
    app.sendall(b"hello")
    assert rig.poll() == []
    assert recv_exactly(backend, 5) == b"hello"
    backend.sendall(b"world!")
    assert rig.poll() == []
    assert recv_exactly(app, 6) == b"world!"
    # Counted per source socket until taken, then from zero again.
    assert rig.table.take(client.fileno()) == 5
    assert rig.table.take(upstream.fileno()) == 6
    assert rig.table.take(client.fileno()) == 0
    # The time of the last event is time.perf_counter's.
    assert before <= rig.table.last(upstream.fileno()) <= time.perf_counter()
    assert rig.spare_holds() == 0


def test_a_burst_reads_a_bounded_number_of_chunks_per_event(rig: Rig) -> None:
    app, client, _, backend = rig.connect()
    app.sendall(b"x" * 20)
    time.sleep(0.05)  # all 20 bytes in the socket before the first read
    # chunk 4, burst 2: three reads per event, then the next poll (level-triggered).
    assert rig.poll(chunk=4, burst=2) == []
    assert rig.table.take(client.fileno()) == 12
    assert rig.poll(chunk=4, burst=2) == []
    assert rig.table.take(client.fileno()) == 8
    assert recv_exactly(backend, 20) == b"x" * 20


def test_end_of_stream_is_handed_back_and_stops_the_connection(rig: Rig) -> None:
    app, client, upstream, backend = rig.connect()
    gen = rig.table.gen(client.fileno())
    app.shutdown(socket.SHUT_WR)
    (result,) = rig.poll()
    assert result[0] == client.fileno()
    assert result[2:] == (rig.sf.EOF, 0, 0, gen)
    # The connection left the simple path, both ways, until the Python hub says otherwise
    # (which also stops watching the ended source, as here).
    rig.epoll.unregister(client.fileno())
    backend.sendall(b"late")
    (result,) = rig.poll()
    assert result[0] == upstream.fileno() and result[2] == rig.sf.SLOW
    rig.table.fast(upstream.fileno(), True)
    assert rig.poll() == []
    assert recv_exactly(app, 4) == b"late"


def test_a_reset_source_is_a_read_error_with_its_errno(rig: Rig) -> None:
    app, client, _, _ = rig.connect()
    rst(app)
    (result,) = rig.poll()
    assert result[0] == client.fileno()
    assert result[2] == rig.sf.READ_ERR and result[4] != 0


def test_a_reset_destination_is_a_write_error_and_the_bytes_stay_in_the_spare_pipe(
    rig: Rig,
) -> None:
    app, client, upstream, backend = rig.connect()
    rig.epoll.unregister(upstream.fileno())  # else its own reset is seen first, as a read error
    rst(backend)
    time.sleep(0.05)
    app.sendall(b"orphan")
    (result,) = rig.poll()
    assert result[0] == client.fileno()
    assert result[2] == rig.sf.WRITE_ERR and result[3] == 6
    assert rig.spare_holds() == 6
    assert rig.table.take(client.fileno()) == 0  # nothing was delivered


def test_a_full_destination_is_partial_and_later_events_of_the_batch_are_not_attempted(
    rig: Rig,
) -> None:
    app, client, upstream, backend = rig.connect()
    app2, client2, _, backend2 = rig.connect()
    # The backend reads nothing and its buffers are small: the upstream socket fills up.
    backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    partial = None
    later: list[tuple[int, int, int, int, int, int]] = []
    for _ in range(200):
        app.sendall(b"z" * 65536)
        app2.sendall(b"y")
        results = rig.poll()
        kinds = [r[2] for r in results]
        if rig.sf.PARTIAL in kinds:
            i = kinds.index(rig.sf.PARTIAL)
            partial, later = results[i], results[i + 1 :]
            break
        if client2.fileno() not in [r[0] for r in results]:
            assert recv_exactly(backend2, 1) == b"y"
    assert partial is not None, "the destination never filled up"
    fd, _, _, got, sent, _ = partial
    assert fd == client.fileno() and got > sent >= 0
    assert rig.spare_holds() == got - sent
    # Whatever came after it in the batch was handed back unattempted.
    assert all(r[2] == rig.sf.SLOW for r in later)


def test_descriptors_outside_the_table_or_off_the_simple_path_are_handed_back(rig: Rig) -> None:
    app, client, _, backend = rig.connect()
    wake_r, wake_w = os.pipe()
    try:
        rig.epoll.register(wake_r, select.EPOLLIN)
        os.write(wake_w, b"!")
        (result,) = rig.poll()
        assert result[0] == wake_r and result[2] == rig.sf.SLOW and result[5] == 0
        rig.epoll.unregister(wake_r)
    finally:
        os.close(wake_r)
        os.close(wake_w)
    rig.table.fast(client.fileno(), False)
    app.sendall(b"q")
    (result,) = rig.poll()
    assert result[0] == client.fileno() and result[2] == rig.sf.SLOW
    assert result[5] == rig.table.gen(client.fileno())
    with pytest.raises(BlockingIOError):
        backend.setblocking(False)
        backend.recv(1)  # not forwarded


def test_without_a_spare_pipe_every_event_is_handed_back(rig: Rig) -> None:
    """Descriptors ran out (the hub's spare is (-1, -1)): nothing is attempted."""
    app, client, _, backend = rig.connect()
    app.sendall(b"wait")
    (result,) = rig.table.poll(rig.epoll.fileno(), 2000, -1, -1, 1 << 16, 4)
    assert result[0] == client.fileno() and result[2] == rig.sf.SLOW
    assert rig.poll() == []  # with a spare again
    assert recv_exactly(backend, 4) == b"wait"


def test_clear_returns_the_untaken_bytes_and_changes_the_generation(rig: Rig) -> None:
    app, client, _, _ = rig.connect()
    fd = client.fileno()
    app.sendall(b"abc")
    assert rig.poll() == []
    gen = rig.table.gen(fd)
    assert gen > 0
    assert rig.table.clear(fd) == 3
    assert rig.table.gen(fd) != gen
    assert (rig.table.take(fd), rig.table.last(fd), rig.table.clear(fd)) == (0, 0.0, 0)
    rig.table.set(fd, 0)
    assert rig.table.gen(fd) not in (0, gen)
    # Never set, out of range, or invalid.
    assert (rig.table.gen(1 << 20), rig.table.take(1 << 20)) == (0, 0)
    with pytest.raises(ValueError):
        rig.table.set(-1, 3)
    with pytest.raises(ValueError):
        rig.sf.Table().poll(rig.epoll.fileno(), 0, *rig.spare, 0, 4)
    with pytest.raises(ValueError):
        rig.sf.Table().poll(rig.epoll.fileno(), 0, *rig.spare, 4096, 4, -1)
    with pytest.raises(OSError):
        rig.sf.Table().poll(-1, 0, *rig.spare, 4096, 4)


def test_a_stale_result_does_not_reach_the_connection_now_on_its_socket() -> None:
    """A result about a socket the trio side cut meanwhile: its spare pipe is not reused."""
    hub = fastrelay.SpliceHub()
    try:
        os.write(hub.spare[1], b"bytes of a connection that is gone")
        hub.settle_results([(12345, select.EPOLLIN, sf.PARTIAL, 34, 0, 7)])
        # Replaced by an empty pipe (the numbers may well come back), none kept in the pool.
        with pytest.raises(BlockingIOError):
            os.read(hub.spare[0], 100)
        assert hub.pipes_open == 1 and not hub.pool
    finally:
        hub.close()


# --------------------------------------------------------------------------- bulk: the copy path
# Once a read fills a whole chunk, the source is copied in reads of up to
# ``copy`` bytes (peeked, then dropped as far as the destination took them).
# Here chunk is small, so that the switch is visible in the byte counts.


def readable(sock: socket.socket) -> bytes:
    """What a non-blocking socket holds now."""
    out = b""
    while True:
        try:
            piece = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not piece:
            return out
        out += piece


def test_a_source_that_fills_a_chunk_is_then_copied_in_large_reads(rig: Rig) -> None:
    app, client, _, backend = rig.connect()
    data = os.urandom(40000)
    app.sendall(data)
    time.sleep(0.05)
    # chunk 4 KiB: one chunk spliced, a whole one, so the source is in bulk ...
    assert rig.poll(chunk=4096, burst=15, copy=1 << 16) == []
    assert rig.table.take(client.fileno()) == 4096
    # ... and the next event copies all that waits in one read (up to 64 KiB: the
    # copy size, and the 16 chunks an event may move).
    assert rig.poll(chunk=4096, burst=15, copy=1 << 16) == []
    assert rig.table.take(client.fileno()) == 40000 - 4096
    assert recv_exactly(backend, 40000) == data
    # A read shorter than a chunk ends bulk: one chunk per event again.
    app.sendall(b"tiny")
    assert rig.poll(chunk=4096, burst=15, copy=1 << 16) == []
    assert recv_exactly(backend, 4) == b"tiny"
    app.sendall(data)
    time.sleep(0.05)
    assert rig.poll(chunk=4096, burst=15, copy=1 << 16) == []
    assert rig.table.take(client.fileno()) == 4 + 4096
    assert rig.poll(chunk=4096, burst=15, copy=1 << 16) == []
    assert rig.table.take(client.fileno()) == 40000 - 4096
    assert recv_exactly(backend, 40000) == data


def test_without_a_copy_size_a_source_is_always_spliced(rig: Rig) -> None:
    app, client, _, backend = rig.connect()
    app.sendall(b"s" * 20000)
    time.sleep(0.05)
    for _ in range(4):
        assert rig.poll(chunk=4096, burst=0) == []
        assert rig.table.take(client.fileno()) == 4096
    # A copy size below the chunk is no copy size either.
    assert rig.poll(chunk=4096, burst=0, copy=1024) == []
    assert rig.table.take(client.fileno()) == 20000 - 4 * 4096
    assert recv_exactly(backend, 20000) == b"s" * 20000


def test_a_full_destination_in_bulk_loses_no_byte_and_keeps_the_order(rig: Rig) -> None:
    """The destination takes part of a copy: nothing it did not take has left the source
    but the next bytes, up to a chunk, which wait in the spare pipe as on the splice path."""
    app, client, upstream, backend = rig.connect()
    backend.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = os.urandom(60000)
    app.sendall(data)
    time.sleep(0.05)
    assert rig.poll(chunk=1024, burst=63, copy=1 << 20) == []  # a whole chunk: bulk
    (result,) = rig.poll(chunk=1024, burst=63, copy=1 << 20)
    fd, _, kind, got, sent, _ = result
    assert (fd, kind) == (client.fileno(), rig.sf.PARTIAL)
    assert 0 < got - sent <= 1024
    delivered = rig.table.take(client.fileno())
    assert delivered == 1024 + sent
    in_pipe = rig.spare_bytes()
    assert len(in_pipe) == got - sent
    backend.settimeout(5)
    received = recv_exactly(backend, delivered)
    rest = readable(client)
    assert received + in_pipe + rest == data


def test_a_reset_destination_in_bulk_takes_nothing_from_the_source(rig: Rig) -> None:
    app, client, upstream, backend = rig.connect()
    app.sendall(b"b" * 4096)
    assert rig.poll(chunk=4096, burst=0, copy=1 << 16) == []  # a whole chunk: bulk
    assert recv_exactly(backend, 4096) == b"b" * 4096
    rig.epoll.unregister(upstream.fileno())  # else its own reset is seen first
    rst(backend)
    time.sleep(0.05)
    app.sendall(b"orphan")
    (result,) = rig.poll(chunk=4096, burst=0, copy=1 << 16)
    assert result[0] == client.fileno()
    assert result[2] == rig.sf.WRITE_ERR and result[3] == 0 and result[4] != 0
    assert rig.spare_holds() == 0
    assert readable(client) == b"orphan"  # still in the source: the reset takes it


def test_end_of_stream_in_bulk_is_handed_back(rig: Rig) -> None:
    app, client, _, backend = rig.connect()
    app.sendall(b"e" * 8192)
    time.sleep(0.05)
    assert rig.poll(chunk=4096, burst=0, copy=1 << 16) == []
    assert rig.poll(chunk=4096, burst=0, copy=1 << 16) == []  # copied
    assert recv_exactly(backend, 8192) == b"e" * 8192
    app.shutdown(socket.SHUT_WR)
    (result,) = rig.poll(chunk=4096, burst=0, copy=1 << 16)
    assert result[0] == client.fileno() and result[2] == rig.sf.EOF


def test_a_bulk_event_copies_again_only_while_under_what_a_spliced_one_may_move(
    rig: Rig,
) -> None:
    """Fairness: a bulk event copies again only while it moved less than chunk * (burst + 1)."""
    app, client, _, backend = rig.connect()
    data = os.urandom(100000)
    app.sendall(data)
    time.sleep(0.05)
    # chunk 4 KiB and burst 1: 8 KiB per event; a copy asks for 16 KiB, so one copy per event.
    assert rig.poll(chunk=4096, burst=1, copy=1 << 14) == []
    assert rig.table.take(client.fileno()) == 4096  # a whole chunk: bulk from here
    assert rig.poll(chunk=4096, burst=1, copy=1 << 14) == []
    assert rig.table.take(client.fileno()) == 16384
    # burst 4: 20 KiB per event, so a second copy (16 KiB moved is less), then no third.
    assert rig.poll(chunk=4096, burst=4, copy=1 << 14) == []
    assert rig.table.take(client.fileno()) == 32768
    moved = 4096 + 16384 + 32768
    while moved < len(data):
        assert rig.poll(chunk=4096, burst=4, copy=1 << 14) == []
        moved += rig.table.take(client.fileno())
    assert moved == len(data)
    assert recv_exactly(backend, len(data)) == data
