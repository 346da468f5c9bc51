"""The chunk queue: memory, then disk, then the drop policy; order kept across restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapter.buffer import Chunk, ChunkQueue, QueueFull, write_atomically


def chunk(q: ChunkQueue, records: int = 10, size: int = 100) -> Chunk:
    payload = bytes([len(q.chunks()) % 256]) * size
    return Chunk(q.next_seq(), Chunk.new_id(), records, size, payload)


def seqs(q: ChunkQueue) -> list[int]:
    return [c.seq for c in q.chunks()]


def test_memory_then_disk_then_full(tmp_path: Path) -> None:
    q = ChunkQueue(memory_max_bytes=250, disk_max_bytes=200, directory=tmp_path)
    for _ in range(4):
        assert q.push(chunk(q)) == []
    assert (q.memory.records, q.memory.bytes) == (20, 200)
    assert (q.disk.records, q.disk.bytes) == (20, 200)
    assert len(list(tmp_path.glob("*.chunk"))) == 2
    with pytest.raises(QueueFull):
        q.push(chunk(q))
    assert seqs(q) == [0, 1, 2, 3]
    assert q.dropped == {}


def test_head_is_read_back_from_disk_and_deleted_when_done(tmp_path: Path) -> None:
    q = ChunkQueue(memory_max_bytes=0, disk_max_bytes=10_000, directory=tmp_path)
    first = chunk(q)
    payload = first.payload
    q.push(first)  # an empty queue always takes a chunk in memory
    second = chunk(q)
    second_payload = second.payload
    q.push(second)
    assert second.payload is None and second.path is not None and second.path.exists()
    head = q.peek()
    assert head is first and head.payload == payload
    q.done(head)
    head = q.peek()
    assert head is second and head.payload == second_payload
    q.done(head)
    assert not list(tmp_path.iterdir())
    assert q.records == 0 and q.disk.bytes == 0


def test_restart_loads_chunks_in_order_ahead_of_new_ones(tmp_path: Path) -> None:
    q = ChunkQueue(memory_max_bytes=150, disk_max_bytes=10_000, directory=tmp_path)
    pushed = [chunk(q, records=i + 1) for i in range(5)]
    payloads = [c.payload for c in pushed]
    for c in pushed:
        q.push(c)
    assert q.spill() == 0  # at exit everything goes to disk
    assert q.memory.records == 0 and q.disk.records == 15

    again = ChunkQueue(memory_max_bytes=150, disk_max_bytes=10_000, directory=tmp_path)
    assert again.load() == 15
    assert seqs(again) == [0, 1, 2, 3, 4]
    new = chunk(again)
    assert new.seq == 5  # numbering continues after the loaded chunks
    again.push(new)
    got = []
    while (head := again.peek()) is not None:
        got.append((head.records, head.payload))
        again.done(head)
    assert got == [(i + 1, payloads[i]) for i in range(5)] + [(10, new.payload)]


def test_load_removes_interrupted_temporary_files(tmp_path: Path) -> None:
    (tmp_path / ".tmp-0000000000000001-3-abc.chunk-1234").write_bytes(b"half")
    (tmp_path / "unrelated.txt").write_bytes(b"x")
    q = ChunkQueue(memory_max_bytes=100, disk_max_bytes=100, directory=tmp_path)
    assert q.load() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt"]


def test_drop_newest_counts_and_keeps_the_queue(tmp_path: Path) -> None:
    q = ChunkQueue(memory_max_bytes=200, drop_policy="drop-newest")
    q.push(chunk(q))
    q.push(chunk(q))
    extra = chunk(q, records=7)
    assert q.push(extra) == [extra]
    assert q.dropped == {"drop-newest": 7}
    assert seqs(q) == [0, 1]


def test_drop_oldest_never_drops_the_chunk_in_flight() -> None:
    q = ChunkQueue(memory_max_bytes=200, drop_policy="drop-oldest")
    q.push(chunk(q, records=1))
    q.push(chunk(q, records=2))
    assert q.peek() is not None and q.peek() is q.chunks()[0]  # head in flight
    dropped = q.push(chunk(q, records=3))
    assert [c.records for c in dropped] == [2]
    assert q.dropped == {"drop-oldest": 2}
    assert [c.records for c in q.chunks()] == [1, 3]
    q.release_head()  # connection broke: the head may go now
    dropped = q.push(chunk(q, records=4))
    assert [c.records for c in dropped] == [1]
    assert [c.records for c in q.chunks()] == [3, 4]


def test_spill_without_directory_reports_what_is_lost() -> None:
    q = ChunkQueue(memory_max_bytes=1000)
    q.push(chunk(q, records=4))
    q.push(chunk(q, records=5))
    assert q.spill() == 9


def test_force_push_ignores_limits() -> None:
    q = ChunkQueue(memory_max_bytes=100)
    q.push(chunk(q))
    with pytest.raises(QueueFull):
        q.push(chunk(q))
    q.push(chunk(q), force=True)
    assert len(q) == 2


def test_write_atomically_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["checkpoint.json"]


def test_failing_disk_counts_as_full(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_bytes(b"")
    q = ChunkQueue(memory_max_bytes=100, disk_max_bytes=10_000, directory=not_a_dir)
    q.push(chunk(q))
    with pytest.raises(QueueFull):
        q.push(chunk(q))
    assert q.disk_failures == 1 and q.disk_error is not None
    q.drop_policy = "drop-newest"
    assert len(q.push(chunk(q, records=3))) == 1
    assert q.dropped == {"drop-newest": 3}
    # At exit, what cannot be written is reported, not raised.
    assert q.spill() == 10


def test_chunk_file_removed_behind_our_back_is_dropped_not_retried(tmp_path: Path) -> None:
    q = ChunkQueue(memory_max_bytes=0, disk_max_bytes=10_000, directory=tmp_path)
    q.push(chunk(q, records=1))
    second = chunk(q, records=2)
    q.push(second)
    third = chunk(q, records=3)
    q.push(third)
    assert second.path is not None
    second.path.unlink()
    head = q.peek()
    assert head is not None and head.records == 1
    q.done(head)
    assert q.peek() is third
    assert q.dropped == {"unreadable": 2}
