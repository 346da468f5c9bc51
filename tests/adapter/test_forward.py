"""The Fluentd forward output: chunk/ack, retry, memory and disk buffer, order, exit.

First a scripted collector on an in-memory stream (virtual time: exact
resend times), then the real thing on loopback: our forward receiver
stopped and restarted mid-stream, and made to swallow acks.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from adapter.app import register_metrics
from adapter.buffer import ChunkQueue
from adapter.inputs import Dispatcher
from adapter.outputs.forward import ForwardOutput, connect_tcp, connect_unix, encode_entry
from adapter.pipeline import Pipeline, PipelineConfig
from sidecar_common.metrics import Registry, parse_text
from sidecar_common.retry import Backoff
from tests.support.fluentd import ForwardReceiver, _ext_hook
from tests.support.procs import free_port, refused_port
from tests.support.wait import eventually

ADAPTER = str(Path(sys.executable).with_name("adapter"))


def records(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"@timestamp": "2024-05-01T12:00:00.250Z", "message": f"line {i}", "seq": i}
        for i in range(start, start + n)
    ]


def chunk_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.chunk"))


async def write_and_drain(
    out: ForwardOutput, batch: list[dict[str, Any]], *, within: float
) -> None:
    """One life of the output: run it, write ``batch``, drain for ``within`` s, stop."""
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await out.write(batch)
        await out.drain(trio.current_time() + within)
        nursery.cancel_scope.cancel()


def make_output(connect: Any, tmp_path: Path | None, **kw: Any) -> ForwardOutput:
    queue = ChunkQueue(
        memory_max_bytes=kw.pop("memory", 1 << 20),
        disk_max_bytes=kw.pop("disk", 1 << 24),
        directory=tmp_path,
        drop_policy=kw.pop("policy", "block"),
    )
    return ForwardOutput(
        connect,
        queue,
        tag="app.test",
        chunk_records=kw.pop("chunk_records", 10),
        ack_timeout=kw.pop("ack_timeout", 0.5),
        backoff=Backoff(0.01, 0.1, 2.0),
        rng=random.Random(1),
        **kw,
    )


def test_entry_carries_event_time_from_the_record() -> None:
    entry = msgpack.unpackb(
        encode_entry({"@timestamp": "2024-05-01T12:00:00.250Z", "message": "x"}, 0.0),
        ext_hook=_ext_hook,
    )
    assert entry[0] == pytest.approx(1714564800.25)
    assert entry[1] == {"@timestamp": "2024-05-01T12:00:00.250Z", "message": "x"}
    # No timestamp: the time it was read; invalid Unicode is escaped, never an error.
    entry = msgpack.unpackb(
        encode_entry({"message": "bad \udcff"}, 1700000000.5), ext_hook=_ext_hook
    )
    assert entry[0] == pytest.approx(1700000000.5)
    assert entry[1] == {"message": "bad \\udcff"}


class ScriptedCollector:
    """Accepts connections over memory streams; the test reads and answers by hand."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](10)
        self.connects = 0

    async def connect(self) -> trio.abc.Stream:
        self.connects += 1
        client, server = trio.testing.memory_stream_pair()
        await self.send.send(server)
        return client


async def read_message(stream: trio.abc.Stream) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook)
    while True:
        for message in unpacker:
            return list(message)
        unpacker.feed(await stream.receive_some(65536))


async def test_chunk_is_resent_until_acked(autojump_clock: trio.testing.MockClock) -> None:
    collector = ScriptedCollector()
    out = make_output(collector.connect, None, ack_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await out.write(records(0, 10))  # a full chunk: sealed and sent at once
        first = await collector.receive.receive()
        t0 = trio.current_time()
        tag, entries, option = await read_message(first)
        assert tag == "app.test" and option["size"] == 10
        chunk_id = option["chunk"]
        # No ack: after the ack timeout the chunk comes again on a new connection.
        second = await collector.receive.receive()
        assert trio.current_time() - t0 >= 2.0
        _tag2, entries2, option2 = await read_message(second)
        assert (entries2, option2["chunk"]) == (entries, chunk_id)
        assert out.stats.retried == 10 and out.stats.delivered == 0
        # A stale ack for something else is skipped; ours completes the chunk.
        await second.send_all(msgpack.packb({"ack": "other"}) + msgpack.packb({"ack": chunk_id}))
        await out.drain(trio.current_time() + 5)
        assert out.stats.delivered == 10 and out.stats.queued == 0
        nursery.cancel_scope.cancel()
    assert collector.connects == 2


async def test_partial_chunk_leaves_after_flush_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    collector = ScriptedCollector()
    out = make_output(collector.connect, None, chunk_records=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        t0 = trio.current_time()
        await out.write(records(0, 3))
        stream = await collector.receive.receive()
        _, _, option = await read_message(stream)
        assert option["size"] == 3
        assert trio.current_time() - t0 == pytest.approx(0.2)  # FLUSH_INTERVAL, not a full chunk
        await stream.send_all(msgpack.packb({"ack": option["chunk"]}))
        await out.drain(trio.current_time() + 1)
        assert out.stats.delivered == 3
        nursery.cancel_scope.cancel()


async def test_collector_down_buffers_to_disk_and_delivers_in_order(tmp_path: Path) -> None:
    receiver = ForwardReceiver().start()
    out = make_output(connect_tcp("127.0.0.1", receiver.port), tmp_path, memory=2000)
    sent: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            sent += records(0, 50)
            await out.write(records(0, 50))
            await eventually(lambda: out.stats.delivered >= 50, limit=20)
            receiver.stop()  # the collector goes away mid-stream
            for start in range(50, 250, 25):
                sent += records(start, 25)
                await out.write(records(start, 25))
                await trio.sleep(0.01)
            await eventually(lambda: out.stats.buffered_disk > 0, limit=20)
            assert any(chunk_files(tmp_path))
            assert out.reachable is False
            receiver.start()  # back on the same port
            await eventually(lambda: out.stats.delivered >= 250, limit=30)
            await out.drain(trio.current_time() + 5)
            nursery.cancel_scope.cancel()
    finally:
        receiver.stop()
    assert receiver.unique_records() == sent  # every record, once, in order
    assert not list(chunk_files(tmp_path))
    assert out.stats.buffered_disk == 0 and out.stats.dropped == {}


async def test_dropped_acks_mean_resends_never_loss(tmp_path: Path) -> None:
    receiver = ForwardReceiver(drop_acks=True).start()
    out = make_output(connect_tcp("127.0.0.1", receiver.port), tmp_path, ack_timeout=0.3)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            await out.write(records(0, 30))
            # The first chunk, sent again and again, never acked.
            assert await trio.to_thread.run_sync(
                lambda: receiver.wait_for(lambda r: len(r.chunks) >= 3, timeout=10)
            )
            assert len({cid for cid, _ in receiver.chunks}) == 1
            assert out.stats.delivered == 0
            receiver.drop_acks = False
            await eventually(lambda: out.stats.delivered >= 30, limit=30)
            await out.drain(trio.current_time() + 5)
            nursery.cancel_scope.cancel()
    finally:
        receiver.stop()
    assert out.stats.retried >= 10
    assert receiver.unique_records() == records(0, 30)
    # Duplicates are whole resent chunks of the head: the same chunk id again.
    ids = [cid for cid, _ in receiver.chunks]
    assert len(set(ids)) == 3 and len(ids) > 3


async def test_exit_leaves_chunks_on_disk_and_next_start_delivers_first(tmp_path: Path) -> None:
    receiver = ForwardReceiver()
    receiver.start()
    port = receiver.port
    receiver.stop()  # nobody listening
    out = make_output(connect_tcp("127.0.0.1", port), tmp_path)
    await write_and_drain(out, records(0, 25), within=0.5)
    assert out.stats.delivered == 0 and out.stats.buffered_disk == 25
    assert len(list(chunk_files(tmp_path))) == 3

    receiver = ForwardReceiver(port=port).start()
    try:
        again = make_output(connect_tcp("127.0.0.1", port), tmp_path)
        assert again.load() == 25
        await write_and_drain(again, records(25, 5), within=20)
    finally:
        receiver.stop()
    assert receiver.unique_records() == records(0, 30)
    assert again.stats.delivered == 30
    assert not list(chunk_files(tmp_path))


async def test_exit_without_buffer_dir_counts_drops() -> None:
    receiver = ForwardReceiver().start()
    port = receiver.port
    receiver.stop()
    out = make_output(connect_tcp("127.0.0.1", port), None)
    await write_and_drain(out, records(0, 12), within=0.3)
    assert out.stats.dropped == {"shutdown": 12}


async def test_drop_newest_policy_counts_what_it_drops() -> None:
    receiver = ForwardReceiver().start()
    port = receiver.port
    receiver.stop()
    out = make_output(connect_tcp("127.0.0.1", port), None, memory=1, policy="drop-newest")
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await out.write(records(0, 40))  # four chunks; only the first fits
        assert out.stats.dropped == {"drop-newest": 30}
        assert out.stats.queued == 10
        nursery.cancel_scope.cancel()


async def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "fluent.sock"
    with ForwardReceiver(path=path) as receiver:
        out = make_output(connect_unix(path), None)
        await write_and_drain(out, records(0, 15), within=10)
    assert receiver.records() == records(0, 15)
    assert receiver.events[0].tag == "app.test"
    assert receiver.events[0].time == pytest.approx(1714564800.25)


def test_command_leaves_records_on_disk_and_next_start_delivers(tmp_path: Path) -> None:
    port = free_port()
    buffer_dir = tmp_path / "buffer"
    cmd = [
        ADAPTER,
        "run",
        "--output",
        "forward",
        "--forward-port",
        str(port),
        "--forward-tag",
        "shop.web",
        "--buffer-dir",
        str(buffer_dir),
        "--forward-chunk-records",
        "5",
        "--drain-timeout",
        "500ms",
        "--no-multiline",
    ]
    first = subprocess.run(
        cmd, input=b"".join(b"m%d\n" % i for i in range(12)), capture_output=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    assert len(chunk_files(buffer_dir)) == 3
    assert b"left in the buffer directory" in first.stderr

    with ForwardReceiver(port=port) as receiver:
        second = subprocess.run(cmd, input=b"m12\nm13\n", capture_output=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert [r["message"] for r in receiver.unique_records()] == [f"m{i}" for i in range(14)]
    assert {e.tag for e in receiver.events} == {"shop.web"}
    assert chunk_files(buffer_dir) == []


def test_otel_records_carry_their_timestamp_too() -> None:
    entry = msgpack.unpackb(
        encode_entry({"timestamp": "2024-05-01T12:00:00.5Z", "body": "x"}, 0.0),
        ext_hook=_ext_hook,
    )
    assert entry[0] == pytest.approx(1714564800.5)


async def test_buffered_and_dropped_records_are_published_as_metrics(tmp_path: Path) -> None:
    with refused_port() as port:
        out = make_output(connect_tcp("127.0.0.1", port), tmp_path, memory=1, disk=1)
        out._queue.drop_policy = "drop-oldest"
        cfg = PipelineConfig(environ={}, multiline=False)
        disp = Dispatcher(lambda: Pipeline(cfg), out, max_line_bytes=1024)
        registry = Registry()
        register_metrics(registry, disp, out)
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            source = disp.open("stdout")
            await disp.feed(source, b"".join(b'{"msg":"%d"}\n' % i for i in range(30)))
            await eventually(lambda: out.stats.retried > 0, limit=20)
            nursery.cancel_scope.cancel()
        metrics = parse_text(registry.render())
        fwd = ("output", "forward")
        assert metrics[("adapter_lines_total", frozenset({("stream", "stdout")}))] == 30
        assert metrics[("adapter_records_total", frozenset({("format", "json")}))] == 30
        # Room for one chunk in memory, none on disk: the two older chunks gave way.
        dropped = ("adapter_dropped_records_total", frozenset({fwd, ("reason", "drop-oldest")}))
        assert metrics[dropped] == 20
        assert metrics[("adapter_buffered_records", frozenset({fwd, ("where", "memory")}))] == 10
        assert metrics[("adapter_buffered_records", frozenset({fwd, ("where", "disk")}))] == 0
        assert metrics[("adapter_output_queue_records", frozenset({fwd}))] == 10
        assert metrics[("adapter_retried_records_total", frozenset({fwd}))] >= 10
        assert metrics[("adapter_delivered_records_total", frozenset({fwd}))] == 0
