"""DNS discovery: re-resolve endpoint names; every address a name resolves to is an endpoint.

A Kubernetes headless Service resolves to one A/AAAA record per ready pod, and
that set changes as pods come and go. So an endpoint given by name is resolved
again every ``interval`` seconds and the cluster's address set follows the
answers (``Cluster.set_addresses`` keeps the state of addresses that stay).

Pure part, ``DnsTable``: the merge. A failed (or empty) resolution keeps the
last good answer for that name: a DNS hiccup must not empty a working cluster.
A name that never resolved stays in the set as the hostname itself, which is
what a static configuration would connect to.

Literal IP addresses are kept as they are and never looked up.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from sidecar_common.jsonlog import get_logger, log_event

from .cluster import Cluster
from .endpoint import Address

Resolver = Callable[[Address], Awaitable[list[Address]]]

_log = get_logger("ambassador.discovery")


def is_literal(host: str) -> bool:
    """An IP address, not a name (``[v6]`` brackets are the caller's business)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsTable:
    """The last good answer per name; ``addresses()`` is their union in name order."""

    def __init__(self, names: Sequence[Address]) -> None:
        self._answers: dict[Address, list[Address]] = {}
        for name in names:
            self._answers.setdefault(name, [name])

    @property
    def names(self) -> list[Address]:
        """The names that need resolving (literal addresses excluded)."""
        return [name for name in self._answers if not is_literal(name[0])]

    def update(self, name: Address, resolved: Sequence[Address] | None) -> bool:
        """Record the answer for ``name`` (None: the lookup failed); True if it changed.

        Answers are de-duplicated and sorted: DNS servers rotate record order and
        a rotation is not a change.
        """
        if name not in self._answers:
            raise KeyError(name)
        if not resolved:
            return False
        answer = sorted(set(resolved))
        if answer == self._answers[name]:
            return False
        self._answers[name] = answer
        return True

    def addresses(self) -> list[Address]:
        seen: dict[Address, None] = {}
        for answer in self._answers.values():
            for address in answer:
                seen.setdefault(address, None)
        return list(seen)


async def resolve_address(name: Address) -> list[Address]:
    """Every TCP address ``name`` resolves to (IPv4 and IPv6); ``OSError`` if it does not."""
    host, port = name
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return sorted({(str(info[4][0]), int(info[4][1])) for info in infos})


async def refresh_once(table: DnsTable, resolve: Resolver, time_limit: float) -> bool:
    """Resolve every name once (each bounded by ``time_limit``); True if some answer changed."""
    changed = False
    for name in table.names:
        answer: list[Address] | None = None
        with trio.move_on_after(time_limit) as scope:
            try:
                answer = await resolve(name)
            except OSError as exc:
                log_event(
                    _log,
                    "dns resolution failed; keeping the last good addresses",
                    level=logging.WARNING,
                    name=f"{name[0]}:{name[1]}",
                    error=str(exc),
                )
        if scope.cancelled_caught:
            log_event(
                _log,
                "dns resolution timed out; keeping the last good addresses",
                level=logging.WARNING,
                name=f"{name[0]}:{name[1]}",
                timeout=time_limit,
            )
        if answer is not None and not answer:
            log_event(
                _log,
                "dns resolution returned nothing; keeping the last good addresses",
                level=logging.WARNING,
                name=f"{name[0]}:{name[1]}",
            )
        if table.update(name, answer):
            changed = True
    return changed


async def run_dns_discovery(
    cluster: Cluster,
    names: Sequence[Address],
    interval: float,
    *,
    resolve: Resolver = resolve_address,
    on_change: Callable[[list[Address]], object] | None = None,
) -> NoReturn:
    """Keep ``cluster``'s addresses equal to what ``names`` resolve to; never returns.

    Resolves at once, then every ``interval`` seconds; each lookup is bounded by
    ``interval`` too. ``on_change(addresses)`` is called after each change of
    the cluster's address set (log it).
    """
    table = DnsTable(names)
    if not table.names:
        await trio.sleep_forever()
    while True:
        await refresh_once(table, resolve, interval)
        addresses = table.addresses()
        if cluster.set_addresses(addresses, trio.current_time()):
            log_event(
                _log,
                "endpoints changed",
                cluster=cluster.name,
                endpoints=[f"{h}:{p}" for h, p in addresses],
            )
            if on_change is not None:
                on_change(addresses)
        await trio.sleep(interval)
