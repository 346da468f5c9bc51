"""Fluentd forward protocol output with at-least-once delivery.

fluent-logger's sender counts a finished ``send`` as delivered; a collector
that restarts loses whatever was in its socket buffers. This output uses the
protocol's own acknowledgement instead: records are packed into chunks
(PackedForward mode: ``[tag, <entries as one bin>, {"chunk": id, "size": n}]``)
and a chunk counts as delivered only when ``{"ack": id}`` comes back. Until
then it stays at the head of the queue and is resent, on a new connection,
after a jittered backoff (``sidecar_common.retry.Backoff``). One chunk is in
flight at a time, so delivery is in order and a resend can only duplicate
the chunk at the head (at-least-once, never reordered).

Entries are ``[EventTime, record]``: EventTime is fluent-logger's
``EventTime`` (msgpack ext type 0, seconds and nanoseconds), taken from the
record's own timestamp so the collector sees when the app logged, not when
we sent. Strings that are not valid Unicode (lone surrogates from invalid
UTF-8 input) are backslash-escaped, so the collector always receives valid
UTF-8.

Buffering is ``adapter.buffer.ChunkQueue``: memory, then disk, then the drop
policy. At exit (``drain``) the output keeps sending until its deadline, then
stops and writes whatever is still queued to the buffer directory, where the
next start picks it up first. Without a buffer directory those records are
lost, and counted and logged as dropped with reason ``shutdown``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import trio
from fluent.sender import EventTime

from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.retry import Backoff

from ..buffer import Chunk, ChunkQueue, QueueFull
from . import OutputStats, Record

__all__ = [
    "AckError",
    "ChunkBuilder",
    "ForwardOutput",
    "connect_tcp",
    "connect_unix",
    "encode_entry",
]

log = get_logger("adapter.forward")

Connect = Callable[[], Awaitable[trio.abc.Stream]]
#: How long an incomplete chunk waits for more records before it is sent anyway.
FLUSH_INTERVAL = 0.2
#: A chunk is sealed at this size even if it has fewer records than the limit.
CHUNK_MAX_BYTES = 1 << 20
#: Acks are tiny maps; anything bigger from the collector is a protocol error.
MAX_ACK_BUFFER = 64 * 1024


class AckError(Exception):
    """The collector closed the connection or answered something that is not our ack."""


def _event_time(record: Record, wall: float) -> EventTime:
    """The record's own time as an EventTime; the time it was read if it has none."""
    ts = record.get("@timestamp", record.get("timestamp"))
    seconds: float | None = None
    if isinstance(ts, str):
        try:
            seconds = datetime.fromisoformat(ts).timestamp()
        except ValueError:
            seconds = None
    else:
        for key in ("time_unix_nano", "timeUnixNano"):
            nano = record.get(key)
            if isinstance(nano, int | str) and str(nano).isdigit():
                value = int(nano)
                return EventTime(value // 1_000_000_000, value % 1_000_000_000)
    if seconds is None or seconds < 0:
        seconds = wall
    whole = int(seconds)
    return EventTime(whole, round((seconds - whole) * 1e9) % 1_000_000_000)


_packer_opts: dict[str, Any] = {"use_bin_type": True, "unicode_errors": "backslashreplace"}


def encode_entry(record: Record, wall: float) -> bytes:
    """One forward-protocol entry, ``[EventTime, record]``, msgpack-encoded."""
    data: bytes = msgpack.packb([_event_time(record, wall), record], **_packer_opts)
    return data


class ChunkBuilder:
    """Entries of the chunk being filled; sealed into a forward message."""

    def __init__(self, max_records: int, max_bytes: int = CHUNK_MAX_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._entries: list[bytes] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: bytes) -> None:
        self._entries.append(entry)
        self.size += len(entry)

    def full(self) -> bool:
        return len(self._entries) >= self.max_records or self.size >= self.max_bytes

    def seal(self, tag: str, seq: int) -> Chunk:
        chunk_id = Chunk.new_id()
        payload: bytes = msgpack.packb(
            [tag, b"".join(self._entries), {"chunk": chunk_id, "size": len(self._entries)}],
            use_bin_type=True,
        )
        chunk = Chunk(seq, chunk_id, len(self._entries), len(payload), payload)
        self._entries = []
        self.size = 0
        return chunk


def connect_tcp(host: str, port: int) -> Connect:
    async def connect() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return connect


def connect_unix(path: Path) -> Connect:
    async def connect() -> trio.abc.Stream:
        return await trio.open_unix_socket(str(path))

    return connect


class ForwardOutput:
    """Records to a Fluentd forward collector; see the module docstring."""

    name = "forward"

    def __init__(
        self,
        connect: Connect,
        queue: ChunkQueue,
        *,
        tag: str = "adapter",
        chunk_records: int = 1000,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] | None = None,
        endpoint: str = "",
    ) -> None:
        self._connect = connect
        self._queue = queue
        self._tag = tag
        self._builder = ChunkBuilder(chunk_records)
        self._ack_timeout = ack_timeout
        self._connect_timeout = connect_timeout
        self._backoff = backoff if backoff is not None else Backoff(0.1, 30.0, 2.0)
        self._rng = rng if rng is not None else random.Random()
        self._wall = wall if wall is not None else time.time
        self._endpoint = endpoint
        self._chunk_ready = trio.Event()
        self._space = trio.Event()
        self._delivered_event = trio.Event()
        self._first_record_at: float | None = None
        self._sealed: deque[Chunk] = deque()
        self._persisted = False
        self._disk_failures_logged = 0
        self._timer_wakeup = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._reachable: bool | None = None
        self._outage_failures = 0
        self.stats = OutputStats()
        self._sync_stats()

    # -- producer side -------------------------------------------------------

    def load(self) -> int:
        """Queue the chunks a previous run left on disk (they go out first)."""
        loaded = self._queue.load()
        if loaded:
            log_event(
                log,
                "chunks left by a previous run queued",
                records=loaded,
                chunks=len(self._queue),
                output=self.name,
            )
        self._sync_stats()
        if len(self._queue):
            self._chunk_ready.set()
        return loaded

    async def write(self, records: list[Record]) -> None:
        """Take ``records``; waits only while the queue is full under policy ``block``.

        Cancel-safe: every record is taken (into the open chunk or a sealed
        one) before the first checkpoint, so a cancelled write loses nothing;
        sealed chunks not yet queued are queued by the next write or ``drain``.
        """
        wall = self._wall()
        for record in records:
            self._builder.add(encode_entry(record, wall))
            if self._builder.full():
                self._seal()
        if len(self._builder) and self._first_record_at is None:
            self._first_record_at = trio.current_time()
            self._timer_wakeup.set()
        self._sync_stats()
        await self._push_sealed()

    def _seal(self) -> None:
        """Close the open chunk; it waits in ``_sealed`` until the queue takes it."""
        if len(self._builder):
            self._sealed.append(self._builder.seal(self._tag, self._queue.next_seq()))
        self._first_record_at = None

    async def _push_sealed(self, *, force: bool = False) -> None:
        """Queue the sealed chunks in order; without ``force`` wait for room (``block``)."""
        while self._sealed:
            chunk = self._sealed[0]
            try:
                dropped = self._queue.push(chunk, force=force)
            except QueueFull:
                self._sync_stats()
                if self._space.is_set():
                    self._space = trio.Event()
                await self._space.wait()
                continue
            self._sealed.popleft()
            self._note_disk_failure()
            for victim in dropped:
                log_event(
                    log,
                    "buffer full: chunk dropped by the drop policy",
                    level=logging.WARNING,
                    records=victim.records,
                    policy=self._queue.drop_policy,
                    output=self.name,
                    dropped_total=sum(self._queue.dropped.values()),
                )
            self._chunk_ready.set()
            self._sync_stats()

    def _note_disk_failure(self) -> None:
        """Log each new disk failure once (the queue treats it as a full disk)."""
        if self._queue.disk_failures != self._disk_failures_logged:
            self._disk_failures_logged = self._queue.disk_failures
            log_event(
                log,
                "cannot write to the buffer directory; treating it as full",
                level=logging.ERROR,
                output=self.name,
                error=self._queue.disk_error,
            )

    def _sync_stats(self) -> None:
        q = self._queue
        self.stats.dropped = dict(q.dropped)
        self.stats.buffered_memory = q.memory.records
        self.stats.buffered_disk = q.disk.records
        self.stats.queued = q.records + len(self._builder) + sum(c.records for c in self._sealed)

    async def _seal_timer(self) -> None:
        """Seal an incomplete chunk ``FLUSH_INTERVAL`` after its first record."""
        while True:
            if self._first_record_at is None:
                await self._timer_wakeup.wait()
                self._timer_wakeup = trio.Event()
                continue
            await trio.sleep_until(self._first_record_at + FLUSH_INTERVAL)
            if (
                self._first_record_at is not None
                and trio.current_time() >= self._first_record_at + FLUSH_INTERVAL
            ):
                self._seal()
                await self._push_sealed()

    # -- sender --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._seal_timer)
                    task_status.started()
                    await self._send_loop()
        finally:
            self._stopped.set()

    async def _send_loop(self) -> None:
        attempt = 0
        stream: trio.abc.Stream | None = None
        unpacker: msgpack.Unpacker | None = None
        try:
            while True:
                chunk = self._queue.peek()
                self._sync_stats()  # peek may have dropped an unreadable chunk file
                if chunk is None:
                    self._chunk_ready = trio.Event()
                    await self._chunk_ready.wait()
                    continue
                # Every attempt after the first counts as a retry of the chunk's
                # records, whether it failed to connect, to send, or to get its ack.
                if chunk.sent:
                    self.stats.retried += chunk.records
                chunk.sent += 1
                try:
                    if stream is None:
                        with trio.fail_after(self._connect_timeout):
                            stream = await self._connect()
                        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_ACK_BUFFER)
                    assert unpacker is not None and chunk.payload is not None
                    with trio.fail_after(self._ack_timeout):
                        await stream.send_all(chunk.payload)
                        await _receive_ack(stream, unpacker, chunk.chunk_id)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, AckError) as exc:
                    if stream is not None:
                        await trio.aclose_forcefully(stream)
                        stream = None
                    self._queue.release_head()
                    self._note_failure(exc)
                    await trio.sleep(self._backoff.delay(attempt, self._rng))
                    attempt += 1
                    continue
                self._queue.done(chunk)
                self.stats.delivered += chunk.records
                attempt = 0
                self._note_success()
                self._space.set()
                self._delivered_event.set()
                self._sync_stats()
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    def _note_failure(self, exc: BaseException) -> None:
        self._outage_failures += 1
        if self._reachable is not False:
            self._reachable = False
            log_event(
                log,
                "collector unreachable; buffering and retrying",
                level=logging.WARNING,
                output=self.name,
                endpoint=self._endpoint,
                error=_describe(exc),
                buffered_records=self._queue.records,
            )

    def _note_success(self) -> None:
        if self._reachable is False:
            log_event(
                log,
                "collector reachable again; delivering buffered records",
                output=self.name,
                endpoint=self._endpoint,
                failures=self._outage_failures,
                buffered_records=self._queue.records,
                retried_total=self.stats.retried,
            )
        self._reachable = True
        self._outage_failures = 0

    @property
    def reachable(self) -> bool | None:
        return self._reachable

    # -- shutdown ------------------------------------------------------------

    async def drain(self, deadline: float) -> None:
        """Send what is queued until ``deadline``; then leave the rest on disk."""
        self._seal()
        await self._push_sealed(force=True)
        with trio.move_on_at(deadline):
            while len(self._queue):
                if self._delivered_event.is_set():
                    self._delivered_event = trio.Event()
                await self._delivered_event.wait()
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
        self.persist()

    def persist(self) -> None:
        """Leave every queued chunk on disk (or count it dropped without a directory).

        Synchronous and idempotent: also called after a hard exit (second
        signal) that cut ``drain`` short.
        """
        self._seal()
        while self._sealed:
            self._queue.push(self._sealed.popleft(), force=True)
        self._queue.release_head()
        if not len(self._queue) or self._persisted:
            return
        self._persisted = True
        lost = self._queue.spill()
        self._note_disk_failure()
        if lost:
            self._queue.dropped["shutdown"] = self._queue.dropped.get("shutdown", 0) + lost
        self._sync_stats()
        if lost:
            log_event(
                log,
                "exit with undelivered records that cannot be kept "
                "(no buffer directory, or it failed): dropped",
                level=logging.ERROR,
                output=self.name,
                records=lost,
            )
        else:
            log_event(
                log,
                "exit with undelivered records: left in the buffer directory",
                level=logging.WARNING,
                output=self.name,
                records=self._queue.records,
                directory=str(self._queue.directory),
            )


async def _receive_ack(stream: trio.abc.Stream, unpacker: msgpack.Unpacker, chunk_id: str) -> None:
    """Read until ``{"ack": chunk_id}``; acks for other chunks (stale resends) are skipped."""
    while True:
        try:
            answers = list(unpacker)
        except ValueError as exc:  # msgpack FormatError, StackError, ExtraData
            raise AckError(f"malformed answer from the collector: {exc}") from None
        for obj in answers:
            if isinstance(obj, dict):
                ack = obj.get("ack")
                if isinstance(ack, bytes):
                    ack = ack.decode("utf-8", "replace")
                if ack == chunk_id:
                    return
            else:
                raise AckError(f"unexpected answer from the collector: {type(obj).__name__}")
        data = await stream.receive_some(65536)
        if not data:
            raise AckError("connection closed before the ack")
        try:
            unpacker.feed(data)
        except msgpack.BufferFull:
            raise AckError("oversized answer from the collector") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
