"""A Fluentd forward-protocol receiver of our own, for tests (no Fluentd on these machines).

It speaks the receiving side of the forward protocol v1 (Message, Forward,
PackedForward and CompressedPackedForward modes), answers ``{"ack": id}`` for
every message carrying the ``chunk`` option, and records everything received.
Tests can stop it, restart it on the same port, or make it swallow acks (it
then records the chunk but never answers, as a collector that dies after
reading would). Threads, not trio, so the same receiver serves trio tests
and subprocess end-to-end tests alike.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        seconds, nanos = struct.unpack(">II", data)
        return seconds + nanos / 1e9
    return msgpack.ExtType(code, data)


@dataclass
class Event:
    tag: str
    time: float
    record: dict[str, Any]
    chunk: str | None
    message: int  # index of the forward message it came in


@dataclass
class ForwardReceiver:
    """Listens on 127.0.0.1:``port`` (0: any free port) or on unix socket ``path``."""

    port: int = 0
    path: Path | None = None
    drop_acks: bool = False
    events: list[Event] = field(default_factory=list)
    chunks: list[tuple[str, int]] = field(default_factory=list)  # (chunk id, entries) received
    acked: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._messages = 0

    # -- control ----------------------------------------------------------------

    def start(self) -> ForwardReceiver:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(self.path))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
        sock.listen(16)
        self._listener = sock
        thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (what a crashed collector looks like)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self) -> ForwardReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e.record for e in self.events]

    def unique_records(self) -> list[dict[str, Any]]:
        """Records in the order first received, each resent chunk counted once."""
        with self._lock:
            events = list(self.events)
        first_message: dict[str, int] = {}
        for e in events:
            if e.chunk is not None:
                first_message.setdefault(e.chunk, e.message)
        return [e.record for e in events if e.chunk is None or first_message[e.chunk] == e.message]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        """Wait until ``predicate(self)`` is true; returns whether it became true."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.1))
        return True

    # -- serving ----------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, strict_map_key=False)
        try:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    ack = self._handle(message)
                    if ack is not None:
                        try:
                            conn.sendall(msgpack.packb({"ack": ack}))
                        except OSError:
                            return
                        with self._changed:
                            self.acked.append(ack)
                            self._changed.notify_all()
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, message: Any) -> str | None:
        """Record one forward message; return the chunk id to ack, if any."""
        if not isinstance(message, list) or len(message) < 2:
            raise ValueError(f"not a forward message: {message!r}")
        tag = message[0]
        option: dict[str, Any] = {}
        entries: list[tuple[float, dict[str, Any]]]
        if isinstance(message[1], bytes):  # PackedForward / CompressedPackedForward
            if len(message) > 2 and isinstance(message[2], dict):
                option = message[2]
            payload = message[1]
            if option.get("compressed") == "gzip":
                payload = gzip.decompress(payload)
            entries = _entries(payload)
        elif isinstance(message[1], list):  # Forward
            if len(message) > 2 and isinstance(message[2], dict):
                option = message[2]
            entries = [(e[0], e[1]) for e in message[1]]
        else:  # Message: [tag, time, record, option?]
            if len(message) > 3 and isinstance(message[3], dict):
                option = message[3]
            entries = [(message[1], message[2])]
        chunk = option.get("chunk")
        with self._changed:
            self._messages += 1
            for t, record in entries:
                self.events.append(Event(tag, float(t), record, chunk, self._messages))
            if chunk is not None:
                self.chunks.append((chunk, len(entries)))
            self._changed.notify_all()
        if chunk is None or self.drop_acks:
            return None
        return str(chunk)


def _entries(payload: bytes) -> list[tuple[float, dict[str, Any]]]:
    unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, strict_map_key=False)
    unpacker.feed(payload)
    return [(entry[0], entry[1]) for entry in unpacker]
