"""etcd discovery: an environment's endpoints are the healthy instances registered under a prefix.

This closes the loop of the service-mesh picture: each app's watcher registers
``<prefix>/<service>/<instance>`` with a JSON :class:`ServiceInstance` value on
a lease (``watcher/registration.py``); the ambassador follows the prefix and
routes to every healthy instance. The follow is a watch, not a poll
(``sidecar_common.etcd.follow_prefix``: list, then watch from the next
revision), so an instance that registers, turns unhealthy, deregisters on
SIGTERM (lease revoked) or dies (lease expired) takes effect as soon as etcd
reports it, well within a second.

Pure part, :func:`select_endpoints`: a snapshot ``{key: value}`` becomes the
addresses to route to, keeping healthy, well-formed records (of one
environment when asked), de-duplicated, in key order. A record that does not
decode is skipped, not fatal: other writers may share the prefix.

When etcd is unreachable, ``follow_prefix`` sends nothing and retries with
backoff and jitter (``sidecar_common.retry.Backoff``), so the cluster keeps the
last known set: an etcd outage must not empty a working cluster. When etcd
returns, the prefix is listed again and whatever changed meanwhile applies.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

import trio

from sidecar_common.etcd import EtcdClient, EtcdError, ServiceInstance, follow_prefix
from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.retry import Backoff

from .cluster import Cluster
from .endpoint import Address

__all__ = [
    "DEFAULT_BACKOFF",
    "Discovered",
    "apply_snapshots",
    "instance_address",
    "normalize_prefix",
    "run_etcd_discovery",
    "select_endpoints",
]

_log = get_logger("ambassador.discovery")

#: Retry pacing while etcd is unreachable: quick at first (a leader election or
#: a restart is over in a second or two), never more than 5 s apart, so the
#: ambassador catches up soon after etcd returns.
DEFAULT_BACKOFF = Backoff(initial=0.1, maximum=5.0)

OnChange = Callable[[list[Address]], object]


def normalize_prefix(prefix: str) -> str:
    """The prefix as a directory: exactly one trailing ``/``.

    The watcher writes ``<prefix>/<service>/<instance>``; following the raw
    string ``/services/api`` would also pick up ``/services/api-v2/...``.
    """
    stripped = prefix.rstrip("/")
    return f"{stripped}/"


def instance_address(instance: ServiceInstance) -> Address | None:
    """The address to connect to for a record, or None if the record cannot be routed to.

    Brackets around an IPv6 literal are dropped (the cluster's addresses are
    bare hosts); an empty host or a port outside 1..65535 makes the record unusable.
    """
    host = instance.address.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not 0 < instance.port < 65536:
        return None
    return (host, instance.port)


@dataclass(frozen=True)
class Discovered:
    """What one snapshot gives: the addresses, and why the other records were left out."""

    addresses: tuple[Address, ...]
    unhealthy: int = 0
    other_environment: int = 0
    invalid: int = 0


def select_endpoints(
    snapshot: Mapping[str, bytes], *, environment: str | None = None
) -> Discovered:
    """The addresses to route to for a ``follow_prefix`` snapshot (pure).

    Keeps records that decode, are healthy, match ``environment`` exactly
    (None: any) and have a usable address; in key order, the first record of
    an address wins (a restarted pod may briefly have its old and new records
    on the same address: one endpoint).
    """
    seen: dict[Address, None] = {}
    unhealthy = other = invalid = 0
    for key in sorted(snapshot):
        try:
            instance = ServiceInstance.from_json(snapshot[key])
        except EtcdError:
            invalid += 1
            continue
        address = instance_address(instance)
        if address is None:
            invalid += 1
        elif environment is not None and instance.environment != environment:
            other += 1
        elif not instance.healthy:
            unhealthy += 1
        else:
            seen.setdefault(address, None)
    return Discovered(tuple(seen), unhealthy=unhealthy, other_environment=other, invalid=invalid)


async def apply_snapshots(
    cluster: Cluster,
    snapshots: trio.MemoryReceiveChannel[dict[str, bytes]],
    *,
    environment: str | None = None,
    on_change: OnChange | None = None,
    prefix: str = "",
) -> None:
    """Set ``cluster``'s addresses from each snapshot received; returns when the channel closes.

    Snapshots that queued up while we were busy are coalesced: only the newest
    counts (each is the whole prefix, not a delta). ``on_change(addresses)`` is
    called after each change of the cluster's address set.
    """
    async for first in snapshots:
        snapshot = first
        while True:
            try:
                snapshot = snapshots.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        found = select_endpoints(snapshot, environment=environment)
        addresses = list(found.addresses)
        if not cluster.set_addresses(addresses, trio.current_time()):
            continue
        log_event(
            _log,
            "endpoints changed",
            cluster=cluster.name,
            source="etcd",
            prefix=prefix,
            environment=environment,
            endpoints=[f"{h}:{p}" for h, p in addresses],
            unhealthy=found.unhealthy,
            other_environment=found.other_environment,
            invalid=found.invalid,
        )
        if not addresses:
            log_event(
                _log,
                "no healthy instance registered; the cluster is empty",
                level=logging.WARNING,
                cluster=cluster.name,
                prefix=prefix,
            )
        if on_change is not None:
            on_change(addresses)


async def run_etcd_discovery(
    cluster: Cluster,
    client_or_url: EtcdClient | str,
    prefix: str,
    *,
    environment: str | None = None,
    on_change: OnChange | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Keep ``cluster``'s addresses equal to the healthy instances under ``prefix``; never returns.

    ``client_or_url`` is an :class:`EtcdClient` or its URL (``http://host:2379``).
    ``prefix`` is the service's directory (``/services/api``), normalised to
    end in ``/``. ``environment`` keeps only records of that environment.

    Started at once (``task_status.started()`` before etcd answers), so an etcd
    that is down does not hold up the caller; until the first answer the
    cluster keeps whatever it had. While etcd is unreachable the last known set
    stays and the follow is retried with ``backoff`` (logged as warnings by
    ``follow_prefix``). Cancel the task to stop.
    """
    client = EtcdClient(client_or_url) if isinstance(client_or_url, str) else client_or_url
    directory = normalize_prefix(prefix)
    # A few slots: follow_prefix never waits on us for long, and apply_snapshots
    # coalesces whatever queued up.
    send, receive = trio.open_memory_channel[dict[str, bytes]](16)
    log_event(
        _log,
        "etcd discovery started",
        cluster=cluster.name,
        etcd=client.url,
        prefix=directory,
        environment=environment,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: follow_prefix(
                client,
                directory,
                send_channel=send,
                backoff=backoff,
                rng=rng,
                task_status=task_status,
            )
        )
        task_status.started()
        await apply_snapshots(
            cluster, receive, environment=environment, on_change=on_change, prefix=directory
        )
    raise AssertionError("unreachable: follow_prefix never returns")
