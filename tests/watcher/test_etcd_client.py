"""sidecar_common.etcd against a real etcd-server through its JSON gateway."""

from __future__ import annotations

import pytest
import trio

from sidecar_common.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    LeaseNotFound,
    ServiceInstance,
    WatchEvent,
    prefix_range_end,
)
from tests.support.etcd import EtcdServer, free_port


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
