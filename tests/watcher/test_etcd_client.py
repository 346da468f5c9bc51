"""sidecar_common.etcd against a real etcd-server through its JSON gateway."""

from __future__ import annotations

import pytest
import trio

from sidecar_common.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    LeaseNotFound,
    PrefixView,
    ServiceInstance,
    WatchEvent,
    follow_prefix,
    healthy_instances,
    prefix_range_end,
)
from sidecar_common.retry import Backoff
from tests.support.etcd import EtcdServer
from tests.support.procs import free_port


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("/services/", b"/services0"),
        ("a", b"b"),
        (b"a\xff", b"b"),
        (b"\xff\xff", b"\0"),
        ("", b"\0"),
    ],
)
def test_prefix_range_end(prefix: str | bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_service_instance_round_trip_and_key() -> None:
    inst = ServiceInstance(
        service="orders",
        instance="pod-1",
        address="10.0.0.7",
        port=8080,
        environment="prod",
        version="1.2.3",
        healthy=False,
        started="2026-11-25T20:30:00Z",
    )
    assert ServiceInstance.from_json(inst.to_json()) == inst
    assert ServiceInstance.key("/services/", "orders", "pod-1") == "/services/orders/pod-1"


@pytest.mark.parametrize("bad", [b"", b"[]", b"{}", b'{"service":"s","instance":"i"}', b"\xff"])
def test_service_instance_rejects_bad_records(bad: bytes) -> None:
    with pytest.raises(EtcdError):
        ServiceInstance.from_json(bad)


async def test_lease_put_keepalive_revoke(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    lease = await client.grant(30)
    assert lease.id > 0 and lease.ttl == 30
    await client.put("/svc/a/1", "one", lease=lease.id)
    kv = await client.get("/svc/a/1")
    assert kv is not None and kv.value == b"one" and kv.lease == lease.id
    assert await client.keepalive(lease.id) == 30
    assert etcd.get("/svc/a/1") == "one"
    await client.revoke(lease.id)
    assert etcd.get("/svc/a/1") is None
    assert await client.get("/svc/a/1") is None
    # A lost lease: keepalive says TTL 0, a put on it is LeaseNotFound, revoke is a no-op.
    assert await client.keepalive(lease.id) == 0
    with pytest.raises(LeaseNotFound):
        await client.put("/svc/a/1", "again", lease=lease.id)
    await client.revoke(lease.id)


async def test_range_prefix_and_delete(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    await client.put("/svc/a/1", b"1")
    await client.put("/svc/a/2", b"2")
    await client.put("/svc/b/1", b"x")
    await client.put("/svc0", b"outside")
    kvs, revision = await client.range_prefix("/svc/a/")
    assert [(kv.key, kv.value) for kv in kvs] == [("/svc/a/1", b"1"), ("/svc/a/2", b"2")]
    assert revision >= 4
    assert await client.delete("/svc/a/1") == 1
    assert await client.delete("/svc/a/1") == 0
    kvs, _ = await client.range_prefix("/svc/")
    assert [kv.key for kv in kvs] == ["/svc/a/2", "/svc/b/1"]


async def test_watch_prefix_sees_puts_and_deletes(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    await client.put("/svc/a/0", "before")
    _, revision = await client.range_prefix("/svc/")
    seen: list[WatchEvent] = []
    with trio.fail_after(10):
        async with client.watch_prefix("/svc/", start_revision=revision + 1) as batches:
            writer = EtcdClient(etcd.url)
            await writer.put("/svc/a/1", "hello")
            await writer.put("/other/x", "not watched")
            await writer.delete("/svc/a/0")
            async for batch in batches:
                seen.extend(batch)
                if len(seen) >= 2:
                    break
    assert [(e.type, e.key, e.value) for e in seen] == [
        ("put", "/svc/a/1", b"hello"),
        ("delete", "/svc/a/0", b""),
    ]
    assert seen[0].revision < seen[1].revision


async def test_watch_stream_broken_when_etcd_stops(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    with trio.fail_after(15), pytest.raises(EtcdUnavailable):
        async with client.watch_prefix("/svc/") as batches:
            etcd.stop()
            async for _ in batches:
                pass


async def test_unreachable_etcd_is_unavailable() -> None:
    client = EtcdClient(f"http://127.0.0.1:{free_port()}", request_timeout=2)
    with pytest.raises(EtcdUnavailable):
        await client.grant(5)
    with pytest.raises(EtcdUnavailable):
        async with client.watch_prefix("/x/"):
            pass


def kv(key: str, value: bytes, rev: int = 1) -> KeyValue:
    return KeyValue(key, value, rev, rev, 0)


def test_prefix_view_applies_events_in_revision_order() -> None:
    view = PrefixView()
    assert view.reset([kv("/s/a", b"1"), kv("/s/b", b"2")], revision=10)
    assert not view.reset([kv("/s/a", b"1"), kv("/s/b", b"2")], revision=10)
    assert view.apply([WatchEvent("put", "/s/c", b"3", 11)])
    assert not view.apply([WatchEvent("put", "/s/c", b"3", 11)])  # replayed: ignored
    assert not view.apply([WatchEvent("put", "/s/c", b"3", 12)])  # same value: no change
    assert view.apply([WatchEvent("delete", "/s/a", b"", 13), WatchEvent("put", "/s/b", b"9", 13)])
    assert not view.apply([WatchEvent("delete", "/s/zzz", b"", 14)])
    assert view.items == {"/s/b": b"9", "/s/c": b"3"}
    assert view.revision == 14


def test_healthy_instances_skips_unhealthy_and_garbage() -> None:
    up = ServiceInstance("s", "a", "10.0.0.1", 80, healthy=True)
    down = ServiceInstance("s", "b", "10.0.0.2", 80, healthy=False)
    snapshot = {
        "/s/a": up.to_json().encode(),
        "/s/b": down.to_json().encode(),
        "/s/c": b"not json",
    }
    assert healthy_instances(snapshot) == [up]


async def test_follow_prefix_tracks_puts_deletes_and_survives_an_etcd_restart(
    etcd: EtcdServer,
) -> None:
    client = EtcdClient(etcd.url, request_timeout=2)
    await client.put("/svc/a", "1")
    send, receive = trio.open_memory_channel[dict[str, bytes]](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: follow_prefix(
                client,
                "/svc/",
                send_channel=send,
                backoff=Backoff(initial=0.05, maximum=0.3),
                task_status=task_status,
            )
        )

        async def next_snapshot_where(pred: object) -> dict[str, bytes]:
            assert callable(pred)
            with trio.fail_after(20):
                async for snap in receive:
                    if pred(snap):
                        return snap
            raise AssertionError("channel closed")

        assert await next_snapshot_where(lambda s: True) == {"/svc/a": b"1"}
        await client.put("/svc/b", "2")
        await client.put("/elsewhere", "x")
        assert await next_snapshot_where(lambda s: "/svc/b" in s) == {
            "/svc/a": b"1",
            "/svc/b": b"2",
        }
        await client.delete("/svc/a")
        assert await next_snapshot_where(lambda s: "/svc/a" not in s) == {"/svc/b": b"2"}
        etcd.stop()
        etcd.start()
        await client.put("/svc/c", "3")
        assert await next_snapshot_where(lambda s: "/svc/c" in s) == {
            "/svc/b": b"2",
            "/svc/c": b"3",
        }
        nursery.cancel_scope.cancel()
