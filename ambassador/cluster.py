"""A cluster: the endpoints of one (listener, environment) and every routing decision on them.

Pure and synchronous: the listener asks ``choose(now)`` for an endpoint and
reports what happened (``connect_started`` / ``connect_succeeded`` /
``connect_failed`` / ``connection_closed``); the health-check task reports
probe results (``health_result``); discovery or a config reload replaces the
address set (``set_addresses``). Time is always passed in, so every decision is
testable with plain numbers.

``choose`` is the hot path (once per connection; once per request for the L7
listener). It works on a cached list of usable endpoints (healthy and not
ejected) that is rebuilt only when something changed: a health transition, an
ejection, an address change, or the moment the earliest ejection expires.
Only an ``exclude`` set (retries) or a per-endpoint connection limit costs an
extra pass over that list.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Container, Iterable

from . import outlier as _outlier
from .balancer import DEFAULT_DECAY, Balancer, make_balancer
from .endpoint import Address, EndpointState
from .health import HealthConfig, Transition
from .outlier import OutlierConfig

#: Latency sample recorded for a failed connect: a failure must make an endpoint
#: look slow to peak-EWMA (a refused connect is fast, and must not look cheap).
DEFAULT_FAILURE_LATENCY = 1.0


class Cluster:
    """The endpoints of one listener in one environment, with balancing, health and ejection."""

    def __init__(
        self,
        name: str,
        *,
        policy: str = "peak_ewma",
        outlier: OutlierConfig | None = None,
        health: HealthConfig | None = None,
        max_connections_per_endpoint: int | None = None,
        rng: random.Random | None = None,
        ewma_decay: float = DEFAULT_DECAY,
        failure_latency: float = DEFAULT_FAILURE_LATENCY,
    ) -> None:
        self.name = name
        self.policy = policy
        self.outlier = outlier if outlier is not None else OutlierConfig()
        self.health = health if health is not None else HealthConfig()
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.ewma_decay = ewma_decay
        self.failure_latency = failure_latency
        self._balancer: Balancer = make_balancer(
            policy, rng if rng is not None else random.Random(), decay=ewma_decay
        )
        self._by_address: dict[Address, EndpointState] = {}
        self._endpoints: list[EndpointState] = []
        self._usable: list[EndpointState] = []
        #: ``choose`` rebuilds ``_usable`` once ``now`` reaches this (-inf: now).
        self._refresh_at = -math.inf
        self._watchers: list[Callable[[], object]] = []
        #: Bumped on every change of the address set.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<Cluster {self.name} policy={self.policy} endpoints={len(self._endpoints)}>"

    # -- the address set -------------------------------------------------------

    @property
    def endpoints(self) -> list[EndpointState]:
        """The current endpoints, in the order the addresses were given (a copy)."""
        return list(self._endpoints)

    def endpoint(self, address: Address) -> EndpointState | None:
        return self._by_address.get(address)

    def set_addresses(self, addresses: Iterable[Address], now: float) -> bool:
        """Replace the address set; addresses that stay keep their state.

        Duplicates are dropped (first occurrence wins the position). Returns True
        if the set changed. Connections to a removed endpoint keep their
        ``EndpointState`` object; reporting on it is harmless.
        """
        new: dict[Address, EndpointState] = {}
        for address in addresses:
            if address in new:
                continue
            ep = self._by_address.get(address)
            new[address] = ep if ep is not None else EndpointState(address, self.health, now)
        if list(new) == list(self._by_address):
            return False
        self._by_address = new
        self._endpoints = list(new.values())
        self._invalidate()
        self.generation += 1
        for watcher in list(self._watchers):
            watcher()
        return True

    def watch(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` after each change of the address set; returns an unsubscriber."""
        self._watchers.append(callback)

        def unsubscribe() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return unsubscribe

    # -- choosing ---------------------------------------------------------------

    def _invalidate(self) -> None:
        self._refresh_at = -math.inf

    def _refresh(self, now: float) -> list[EndpointState]:
        usable: list[EndpointState] = []
        next_expiry = math.inf
        for ep in self._endpoints:
            if not ep.healthy:
                continue
            if now < ep.ejected_until:
                next_expiry = min(next_expiry, ep.ejected_until)
                continue
            usable.append(ep)
        self._usable = usable
        self._refresh_at = next_expiry
        return usable

    def usable(self, now: float) -> list[EndpointState]:
        """Healthy, non-ejected endpoints (ignores the per-endpoint connection limit)."""
        if now >= self._refresh_at:
            return list(self._refresh(now))
        return list(self._usable)

    def choose(self, now: float, exclude: Container[Address] = ()) -> EndpointState | None:
        """The endpoint for the next connection (or request), or None: fail fast.

        Candidates are healthy, not ejected, not in ``exclude`` (addresses
        already tried by this connection) and under the per-endpoint limit;
        the policy picks among them.
        """
        candidates = self._refresh(now) if now >= self._refresh_at else self._usable
        limit = self.max_connections_per_endpoint
        if limit is not None:
            if exclude:
                candidates = [
                    ep for ep in candidates if ep.active < limit and ep.address not in exclude
                ]
            else:
                candidates = [ep for ep in candidates if ep.active < limit]
        elif exclude:
            candidates = [ep for ep in candidates if ep.address not in exclude]
        if not candidates:
            return None
        return self._balancer.pick(candidates, now)

    def has_usable(self, now: float) -> bool:
        """Some endpoint is healthy and not ejected (drives /readyz)."""
        candidates = self._refresh(now) if now >= self._refresh_at else self._usable
        return bool(candidates)

    # -- reports from the listener ----------------------------------------------

    def connect_started(self, ep: EndpointState) -> None:
        """A connection attempt to ``ep`` begins: it counts as load from now on."""
        ep.active += 1

    def connect_succeeded(self, ep: EndpointState, latency: float, now: float) -> None:
        """The attempt connected after ``latency`` seconds (the connection stays active)."""
        ep.connects_total += 1
        ep.observe_latency(latency, now, self.ewma_decay)
        _outlier.record_success(ep)

    def connect_failed(self, ep: EndpointState, now: float) -> bool:
        """The attempt failed (refused, timed out...): ends it; True if ``ep`` was ejected now."""
        if ep.active > 0:
            ep.active -= 1
        ep.observe_latency(self.failure_latency, now, self.ewma_decay)
        if self._by_address.get(ep.address) is not ep:
            ep.consecutive_failures += 1
            ep.connect_failures_total += 1
            return False
        ejected = _outlier.record_failure(
            self.outlier,
            ep,
            now,
            _outlier.count_ejected(self._endpoints, now),
            len(self._endpoints),
        )
        if ejected:
            self._invalidate()
        return ejected

    def connection_closed(self, ep: EndpointState) -> None:
        """A connection that had succeeded is over."""
        if ep.active > 0:
            ep.active -= 1

    # -- reports from the health checker ------------------------------------------

    def health_result(
        self, ep: EndpointState, ok: bool, now: float, reason: str = ""
    ) -> Transition | None:
        """One active probe result; returns the health transition it causes, if any.

        Results for an endpoint no longer in the cluster are ignored. A passing
        probe also ends an outlier ejection early when the config says so.
        """
        if self._by_address.get(ep.address) is not ep:
            return None
        transition = ep.health.record(ok, now, reason)
        if transition is not None:
            ep.healthy = transition.healthy
            self._invalidate()
        if ok and self.outlier.uneject_on_health_success and _outlier.uneject(ep, now):
            self._invalidate()
        return transition

    def ejected_count(self, now: float) -> int:
        return _outlier.count_ejected(self._endpoints, now)
