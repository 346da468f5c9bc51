"""The registration state machine as a conversation, then its trio shell on a real etcd."""

from __future__ import annotations

import json
import random

import pytest
import trio

from sidecar_common.etcd import EtcdClient, ServiceInstance
from sidecar_common.metrics import Registry
from sidecar_common.retry import Backoff
from tests.support.etcd import EtcdServer
from tests.support.wait import eventually
from watcher.probes import HealthState
from watcher.registration import (
    Delete,
    Grant,
    KeepAlive,
    Put,
    Registrar,
    RegistrationMetrics,
    Wait,
    revoke,
    run_registration,
)

KEY = "/services/orders/pod-1"
RECORD = ServiceInstance(
    service="orders",
    instance="pod-1",
    address="10.0.0.7",
    port=8080,
    environment="test",
    version="1.0",
    started="2026-11-25T20:30:00Z",
)


def value(healthy: bool) -> str:
    return json.dumps(
        {
            "address": "10.0.0.7",
            "environment": "test",
            "healthy": healthy,
            "instance": "pod-1",
            "port": 8080,
            "service": "orders",
            "started": "2026-11-25T20:30:00Z",
            "version": "1.0",
        },
        separators=(",", ":"),
    )


def registrar(on_unhealthy: str = "mark", healthy: bool | None = True) -> Registrar:
    r = Registrar(
        key=KEY,
        record=RECORD,
        ttl=9,
        on_unhealthy=on_unhealthy,
        backoff=Backoff(initial=1.0, maximum=4.0),
        rng=random.Random(0),
    )
    r.set_health(healthy)
    return r


def test_grant_put_then_keepalive_every_third_of_the_ttl() -> None:
    r = registrar()
    assert r.next_command(0.0) == Grant(9)
    r.granted(0.0, lease=42, ttl=9)
    assert r.next_command(0.0) == Put(KEY, value(True), 42)
    r.put_done(value(True))
    assert r.registered
    assert r.next_command(1.0) == Wait(3.0)
    assert r.next_command(3.0) == KeepAlive(42)
    assert r.kept_alive(3.0, ttl=9)
    assert r.next_command(3.1) == Wait(6.0)


def test_health_flip_marks_the_record() -> None:
    r = registrar()
    r.granted(0.0, 42, 9)
    r.put_done(value(True))
    r.set_health(False)
    assert r.next_command(1.0) == Put(KEY, value(False), 42)
    r.put_done(value(False))
    r.set_health(True)
    assert r.next_command(1.5) == Put(KEY, value(True), 42)


def test_unknown_health_counts_as_unhealthy() -> None:
    r = registrar(healthy=None)
    r.granted(0.0, 42, 9)
    assert r.next_command(0.0) == Put(KEY, value(False), 42)


def test_remove_mode_deletes_while_unhealthy_and_puts_back() -> None:
    r = registrar("remove")
    r.granted(0.0, 42, 9)
    r.put_done(value(True))
    r.set_health(False)
    assert r.next_command(1.0) == Delete(KEY)
    r.deleted()
    assert not r.registered
    # The lease is still kept alive, so coming back is one put.
    assert r.next_command(3.0) == KeepAlive(42)
    r.kept_alive(3.0, 9)
    r.set_health(True)
    assert r.next_command(3.5) == Put(KEY, value(True), 42)


def test_lease_lost_in_keepalive_answer_is_granted_again() -> None:
    r = registrar()
    r.granted(0.0, 42, 9)
    r.put_done(value(True))
    assert not r.kept_alive(3.0, ttl=0)
    assert not r.registered
    assert r.next_command(3.0) == Grant(9)
    r.granted(3.0, 43, 9)
    assert r.next_command(3.0) == Put(KEY, value(True), 43)


def test_put_refused_for_a_lost_lease_grants_again_after_backoff() -> None:
    r = registrar()
    r.granted(0.0, 42, 9)
    delay = r.failed(0.5, lease_lost=True)
    assert 0 <= delay <= 1.0
    assert r.next_command(0.5) == Wait(0.5 + delay)
    assert r.next_command(0.5 + delay) == Grant(9)


def test_etcd_down_backs_off_with_growing_bounded_delays() -> None:
    r = registrar()
    delays = [r.failed(float(i)) for i in range(8)]
    caps = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert r.next_command(7.0 + delays[-1]) == Grant(9)
    # A success resets the backoff.
    r.granted(20.0, 42, 9)
    assert r.failures == 0


def test_failed_keepalive_rewrites_the_key_when_etcd_returns() -> None:
    r = registrar()
    r.granted(0.0, 42, 9)
    r.put_done(value(True))
    delay = r.failed(3.0)
    # Still the same lease: once back, the value is written again (its fate is unknown).
    assert r.next_command(3.0 + delay) == Put(KEY, value(True), 42)


def test_default_backoff_never_waits_longer_than_a_third_of_the_ttl() -> None:
    r = Registrar(key=KEY, record=RECORD, ttl=6, rng=random.Random(0))
    assert max(r.failed(0.0) for _ in range(50)) <= 2.0


@pytest.mark.parametrize("bad", [{"ttl": 0}, {"on_unhealthy": "explode"}])
def test_registrar_rejects_bad_arguments(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"key": KEY, "record": RECORD, "ttl": 9, **bad}
    with pytest.raises(ValueError):
        Registrar(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The shell against a real etcd (real clock: etcd's TTLs are real seconds).


def shell_registrar(ttl: int = 3, on_unhealthy: str = "mark") -> Registrar:
    return Registrar(
        key=KEY,
        record=RECORD,
        ttl=ttl,
        on_unhealthy=on_unhealthy,
        backoff=Backoff(initial=0.05, maximum=0.3),
    )


async def test_registers_keeps_alive_past_the_ttl_and_revokes(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    r = shell_registrar(ttl=2)
    health = HealthState(healthy=True)
    metrics = RegistrationMetrics(Registry())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_registration, client, r, health, metrics)
        await eventually(lambda: etcd.get(KEY) is not None)
        assert ServiceInstance.from_json(etcd.get(KEY) or "").healthy
        lease = r.lease
        assert lease is not None
        # Three TTLs later the key is still there, on the same lease: keepalives work.
        await trio.sleep(6)
        assert etcd.get(KEY) is not None and r.lease == lease
        assert metrics.registered.value == 1
        nursery.cancel_scope.cancel()
    assert await revoke(client, r)
    assert etcd.get(KEY) is None
    assert etcd.lease_ttl(lease) == -1


async def test_health_changes_mark_then_remove(etcd: EtcdServer) -> None:
    for mode in ("mark", "remove"):
        key_gone_or_marked = {
            "mark": lambda: (
                (v := etcd.get(KEY)) is not None and not ServiceInstance.from_json(v).healthy
            ),
            "remove": lambda: etcd.get(KEY) is None,
        }[mode]
        client = EtcdClient(etcd.url)
        r = shell_registrar(ttl=10, on_unhealthy=mode)
        health = HealthState(healthy=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_registration, client, r, health, RegistrationMetrics(Registry()))
            await eventually(lambda: etcd.get(KEY) is not None)
            health.set(False, "probe failed")
            await eventually(key_gone_or_marked)
            health.set(True, "probe ok")
            await eventually(
                lambda: (v := etcd.get(KEY)) is not None and ServiceInstance.from_json(v).healthy
            )
            nursery.cancel_scope.cancel()
        await revoke(client, r)


async def test_lost_lease_is_detected_and_granted_again(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    r = shell_registrar(ttl=3)
    metrics = RegistrationMetrics(Registry())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_registration, client, r, HealthState(True), metrics)
        await eventually(lambda: etcd.get(KEY) is not None)
        first = r.lease
        assert first is not None
        # Someone (an operator, an etcd restore) revokes our lease: the key goes.
        etcd.call("/v3/lease/revoke", {"ID": str(first)})
        assert etcd.get(KEY) is None
        await eventually(lambda: etcd.get(KEY) is not None)
        assert r.lease is not None and r.lease != first
        assert metrics.grants.value == 2
        nursery.cancel_scope.cancel()


async def test_etcd_down_at_start_then_up_registers(etcd: EtcdServer) -> None:
    etcd.stop()
    client = EtcdClient(etcd.url, request_timeout=1)
    r = shell_registrar(ttl=3)
    metrics = RegistrationMetrics(Registry())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_registration, client, r, HealthState(True), metrics)
        await eventually(lambda: metrics.errors.value >= 3)
        assert not r.registered
        etcd.start()
        await eventually(lambda: etcd.get(KEY) is not None)
        # etcd goes away again for longer than the TTL. (etcd itself renews
        # every lease's TTL when it restarts, so the lease may survive.) The
        # failures are retried and the registration is whole again after.
        errors_before = metrics.errors.value
        etcd.stop()
        await eventually(lambda: metrics.errors.value >= errors_before + 2)
        assert metrics.registered.value == 0
        etcd.start()
        await eventually(lambda: r.registered and etcd.get(KEY) is not None)
        kv = await client.get(KEY)
        assert kv is not None and kv.lease == r.lease
        assert etcd.lease_ttl(kv.lease) > 0
        nursery.cancel_scope.cancel()
