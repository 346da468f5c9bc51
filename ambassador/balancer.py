"""Load-balancing policies: pick one endpoint among the usable candidates.

Pure and cheap: ``pick`` runs once per connection (and once per request for
the L7 listener), so each policy is O(1) (round robin, peak-EWMA P2C) or one
pass over the candidates (least connections). The cluster has already removed
unhealthy, ejected, excluded and saturated endpoints; a policy never sees them
and returns ``None`` only for an empty candidate list.

Policies:

``round_robin``
    Candidates in turn. A counter over the current list: fair while the list is
    stable; after a change the rotation simply continues over the new list.
``least_connections``
    The candidate with the fewest active connections; ties are broken by a
    rotating start, so equal endpoints share the load instead of the first one
    taking all of it.
``peak_ewma`` (default)
    Power of two random choices (Mitzenmacher) on the cost
    ``peak_ewma_latency * (active + 1)``, as finagle and linkerd (tower) do:
    sample two distinct candidates, take the cheaper. The latency estimate is
    peak-sensitive and decays towards zero while an endpoint is idle (time
    constant ``decay``, 10 s like linkerd), so a once-slow endpoint is tried
    again later. An endpoint whose latency is still unknown costs 0 while it has
    nothing in flight (new endpoints get tried at once) and a large penalty
    while it has (one probe at a time until the first measurement), as finagle's
    ``PeakEwma`` does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from .endpoint import EndpointState

#: Cost of an endpoint with requests in flight but no latency sample yet (seconds).
UNKNOWN_LATENCY_PENALTY = 1e6
#: Time constant of the peak-EWMA decay (linkerd's default).
DEFAULT_DECAY = 10.0

POLICIES: tuple[str, ...] = ("peak_ewma", "round_robin", "least_connections")


class Balancer(Protocol):
    """What the cluster needs of a policy."""

    name: str

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState | None: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self, rng: random.Random) -> None:
        # Random start so that many ambassadors (one per pod) do not all hit the
        # first endpoint together.
        self._next = rng.randrange(1 << 16)

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState | None:
        n = len(candidates)
        if n == 0:
            return None
        i = self._next % n
        self._next = i + 1
        return candidates[i]


class LeastConnections:
    name = "least_connections"

    def __init__(self, rng: random.Random) -> None:
        self._start = rng.randrange(1 << 16)

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState | None:
        n = len(candidates)
        if n == 0:
            return None
        start = self._start % n
        self._start = start + 1
        best = candidates[start]
        best_active = best.active
        for k in range(1, n):
            ep = candidates[(start + k) % n]
            if ep.active < best_active:
                best, best_active = ep, ep.active
        return best


class PeakEwma:
    name = "peak_ewma"

    def __init__(self, rng: random.Random, decay: float = DEFAULT_DECAY) -> None:
        if decay <= 0:
            raise ValueError("decay must be > 0")
        self._rng = rng
        self.decay = decay

    def cost(self, ep: EndpointState, now: float) -> float:
        """``latency * (active + 1)``; unknown latency: 0 when idle, a penalty when busy."""
        if ep.latency_samples == 0:
            return 0.0 if ep.active == 0 else UNKNOWN_LATENCY_PENALTY + ep.active
        return ep.latency_estimate(now, self.decay) * (ep.active + 1)

    def pick(self, candidates: Sequence[EndpointState], now: float) -> EndpointState | None:
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        # Two distinct indices; random() * n can round up to n, hence the min().
        rnd = self._rng.random
        i = min(int(rnd() * n), n - 1)
        j = min(int(rnd() * (n - 1)), n - 2)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return b if self.cost(b, now) < self.cost(a, now) else a


def make_balancer(name: str, rng: random.Random, *, decay: float = DEFAULT_DECAY) -> Balancer:
    """Build the policy called ``name`` (one of ``POLICIES``); ``ValueError`` otherwise."""
    if name == "peak_ewma":
        return PeakEwma(rng, decay)
    if name == "round_robin":
        return RoundRobin(rng)
    if name == "least_connections":
        return LeastConnections(rng)
    raise ValueError(f"unknown balancing policy {name!r} (expected one of {', '.join(POLICIES)})")
