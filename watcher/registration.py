"""Registration of the app in etcd, kept alive by a lease, as a pure state machine.

What must hold, whatever etcd does:

- the key ``<prefix>/<service>/<instance>`` exists, attached to a lease with
  TTL ``ttl``, while the watcher lives, so the key vanishes within the TTL
  when the pod dies (nobody refreshes the lease);
- its value says whether the app is healthy (``mark``), or the key is
  removed while it is not (``remove``);
- etcd down at start or later is retried with backoff and jitter; when it
  comes back, a lease that expired meanwhile is noticed from the keepalive
  answer (TTL 0) or from a put refused with "lease not found", and a new one
  is granted and the key put again;
- on graceful exit the lease is revoked, so the key goes at once.

``Registrar`` decides (no I/O): ask it ``next_command(now)`` and tell it the
outcome with ``granted``/``put_done``/``deleted``/``kept_alive``/``failed``.
Commands are imperatives, outcomes past-tense facts, as in a sans-I/O
protocol. ``run_registration`` is the trio shell that executes the commands
against ``sidecar_common.etcd``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace

import trio

from sidecar_common.etcd import EtcdClient, EtcdError, LeaseNotFound, ServiceInstance
from sidecar_common.jsonlog import log_event
from sidecar_common.metrics import Registry
from sidecar_common.retry import Backoff

from .probes import HealthState

__all__ = [
    "Delete",
    "Grant",
    "KeepAlive",
    "Put",
    "Registrar",
    "RegistrationMetrics",
    "Wait",
    "revoke",
    "run_registration",
]

log = logging.getLogger("watcher.registration")


@dataclass(frozen=True)
class Grant:
    ttl: int


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class KeepAlive:
    lease: int


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until`` (or until the app's health changes)."""

    until: float


Command = Grant | Put | Delete | KeepAlive | Wait

# What we know about the key in etcd: a value, absent, or unknown (after a
# new lease, or an error in the middle of a write).
_UNKNOWN = object()


class Registrar:
    """Decides the next etcd call from the lease, the app's health and the clock.

    ``record`` is the instance as published (its ``healthy`` is overwritten
    from the current health). ``healthy=None`` (no probe result yet) counts as
    unhealthy. Keepalives are sent every ``ttl / 3`` seconds, as etcd's own
    client does, so two may be lost before the lease expires.
    """

    def __init__(
        self,
        *,
        key: str,
        record: ServiceInstance,
        ttl: int,
        on_unhealthy: str = "mark",
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if ttl < 1:
            raise ValueError("ttl must be >= 1")
        if on_unhealthy not in ("mark", "remove"):
            raise ValueError("on_unhealthy must be 'mark' or 'remove'")
        self.key = key
        self.record = record
        self.ttl = ttl
        self.on_unhealthy = on_unhealthy
        # Never wait longer than a third of the TTL between attempts, so a
        # short etcd blip does not cost us the lease.
        self.backoff = backoff or Backoff(initial=0.1, maximum=max(0.1, min(5.0, ttl / 3)))
        self.rng = rng or random.Random()
        self.healthy: bool | None = None
        self.lease: int | None = None
        self._published: object = _UNKNOWN
        self._keepalive_at = 0.0
        self._retry_at: float | None = None
        self.failures = 0

    # -- inputs ------------------------------------------------------------

    def set_health(self, healthy: bool | None) -> None:
        self.healthy = healthy

    def granted(self, now: float, lease: int, ttl: int) -> None:
        self.lease = lease
        self._published = _UNKNOWN  # a new lease: the key must be (re)attached to it
        self._keepalive_at = now + max(ttl, 1) / 3
        self._succeeded()

    def put_done(self, value: str) -> None:
        self._published = value
        self._succeeded()

    def deleted(self) -> None:
        self._published = None
        self._succeeded()

    def kept_alive(self, now: float, ttl: int) -> bool:
        """Record a keepalive answer; returns False if the lease was lost (TTL 0)."""
        self._succeeded()
        if ttl <= 0:
            self._lose_lease()
            return False
        self._keepalive_at = now + ttl / 3
        return True

    def failed(self, now: float, *, lease_lost: bool = False) -> float:
        """Record a failed call; returns the backoff delay before the next attempt."""
        if lease_lost:
            self._lose_lease()
        # The outcome of a failed write is unknown: write again when back.
        if self._published is not None:
            self._published = _UNKNOWN
        delay = self.backoff.delay(self.failures, self.rng)
        self.failures += 1
        self._retry_at = now + delay
        return delay

    def revoked(self) -> None:
        """The lease was revoked on purpose (exit): the key is gone with it."""
        self.lease = None
        self._published = None

    def _succeeded(self) -> None:
        self.failures = 0
        self._retry_at = None

    def _lose_lease(self) -> None:
        self.lease = None
        self._published = _UNKNOWN

    # -- decisions ---------------------------------------------------------

    @property
    def registered(self) -> bool:
        """True when the key is known to be in etcd on a live lease."""
        return self.lease is not None and isinstance(self._published, str)

    def desired_value(self) -> str | None:
        healthy = self.healthy is True
        if not healthy and self.on_unhealthy == "remove":
            return None
        return replace(self.record, healthy=healthy).to_json()

    def next_command(self, now: float) -> Command:
        if self._retry_at is not None and now < self._retry_at:
            return Wait(self._retry_at)
        if self.lease is None:
            return Grant(self.ttl)
        desired = self.desired_value()
        if desired != self._published:
            if desired is None:
                return Delete(self.key)
            return Put(self.key, desired, self.lease)
        if now >= self._keepalive_at:
            return KeepAlive(self.lease)
        return Wait(self._keepalive_at)


class RegistrationMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registered = registry.gauge(
            "watcher_registered", "1 while the instance's key is in etcd on a live lease."
        )
        self.errors = registry.counter(
            "watcher_etcd_errors_total", "etcd calls that failed (retried with backoff)."
        )
        self.grants = registry.counter(
            "watcher_etcd_lease_grants_total", "Leases granted (more than one: a lease was lost)."
        )


async def run_registration(
    client: EtcdClient,
    registrar: Registrar,
    health: HealthState,
    metrics: RegistrationMetrics,
) -> None:
    """Execute the registrar's commands forever; cancel it to stop (then call ``revoke``)."""
    seen_version = -1
    while True:
        if health.version != seen_version:
            seen_version = health.version
            registrar.set_health(health.healthy)
        now = trio.current_time()
        command = registrar.next_command(now)
        if isinstance(command, Wait):
            with trio.move_on_at(command.until):
                await health.wait_changed(seen_version)
            continue
        try:
            await _execute(client, registrar, command)
        except LeaseNotFound:
            registrar.failed(trio.current_time(), lease_lost=True)
            metrics.errors.inc()
            log_event(
                log, "lease lost; granting a new one", level=logging.WARNING, key=registrar.key
            )
        except EtcdError as exc:
            delay = registrar.failed(trio.current_time())
            metrics.errors.inc()
            log_event(
                log,
                "etcd call failed; retrying",
                level=logging.WARNING,
                key=registrar.key,
                call=type(command).__name__.lower(),
                error=str(exc),
                attempt=registrar.failures,
                retry_in_seconds=round(delay, 3),
            )
        else:
            if isinstance(command, Grant):
                metrics.grants.inc()
        metrics.registered.set(1 if registrar.registered else 0)


async def _execute(client: EtcdClient, registrar: Registrar, command: Command) -> None:
    if isinstance(command, Grant):
        lease = await client.grant(command.ttl)
        registrar.granted(trio.current_time(), lease.id, lease.ttl)
        log_event(log, "lease granted", lease=lease.id, ttl_seconds=lease.ttl)
    elif isinstance(command, Put):
        await client.put(command.key, command.value, lease=command.lease)
        registrar.put_done(command.value)
        log_event(
            log,
            "registered",
            event="registered",
            key=command.key,
            lease=command.lease,
            healthy=registrar.healthy is True,
        )
    elif isinstance(command, Delete):
        await client.delete(command.key)
        registrar.deleted()
        log_event(log, "deregistered (app unhealthy)", event="deregistered", key=command.key)
    elif isinstance(command, KeepAlive):
        ttl = await client.keepalive(command.lease)
        if not registrar.kept_alive(trio.current_time(), ttl):
            log_event(
                log,
                "lease lost; granting a new one",
                level=logging.WARNING,
                key=registrar.key,
                lease=command.lease,
            )


async def revoke(client: EtcdClient, registrar: Registrar) -> bool:
    """Revoke the current lease (graceful exit): the key disappears at once.

    Bound it with the caller's cancel scope. Returns True if revoked.
    """
    lease = registrar.lease
    if lease is None:
        return False
    try:
        await client.revoke(lease)
    except EtcdError as exc:
        log_event(
            log,
            "could not revoke the lease; the key expires with its TTL",
            level=logging.WARNING,
            key=registrar.key,
            error=str(exc),
        )
        return False
    registrar.revoked()
    log_event(log, "deregistered (lease revoked)", event="deregistered", key=registrar.key)
    return True
