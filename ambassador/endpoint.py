"""State of one upstream endpoint as the routing core sees it.

Plain data with a few arithmetic helpers; the ``Cluster`` is the only writer.
It is read on every ``choose()`` (per connection now, per request with the L7
listener), so it is a slotted class and the hot fields are plain attributes.

"Active" is the endpoint's outstanding load: connections being connected or
open for an L4 listener, requests in flight for an L7 one. The latency the
peak-EWMA tracks is whatever the caller measures per unit of load (connect
time for L4, response time for L7).
"""

from __future__ import annotations

import math

from .health import HealthConfig, HealthState

Address = tuple[str, int]
"""(ip or hostname, port)."""


class EndpointState:
    """Health, ejection, load and latency estimate of one address."""

    __slots__ = (
        "active",
        "address",
        "connect_failures_total",
        "connects_total",
        "consecutive_failures",
        "ejected_until",
        "ejections_total",
        "ewma_latency",
        "ewma_stamp",
        "health",
        "healthy",
        "latency_samples",
        "name",
        "times_ejected",
    )

    def __init__(self, address: Address, health: HealthConfig, now: float) -> None:
        self.address = address
        host, port = address
        #: ``host:port`` (``[v6]:port``), the form used in metrics labels and logs
        #: (made once: the HTTP listener names the endpoint on every request).
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        #: Active health (kept equal to ``health.healthy``; a plain attribute for ``choose``).
        self.health = HealthState(health)
        self.healthy = self.health.healthy
        #: Passive (outlier) ejection: unusable while ``now < ejected_until``.
        self.ejected_until = -math.inf
        #: How many ejections the next one builds on (grows on ejection, decays while well).
        self.times_ejected = 0
        self.consecutive_failures = 0
        self.active = 0
        #: Peak-EWMA latency estimate in seconds, as of ``ewma_stamp``; unknown while
        #: ``latency_samples`` is 0.
        self.ewma_latency = 0.0
        self.ewma_stamp = now
        self.latency_samples = 0
        self.connects_total = 0
        self.connect_failures_total = 0
        self.ejections_total = 0

    def __repr__(self) -> str:
        host, port = self.address
        return (
            f"<EndpointState {host}:{port} healthy={self.healthy} active={self.active}"
            f" ejected_until={self.ejected_until:.3f} ewma={self.ewma_latency:.6f}>"
        )

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def usable(self, now: float) -> bool:
        """Healthy and not ejected (the per-endpoint connection limit is the cluster's)."""
        return self.healthy and now >= self.ejected_until

    def latency_estimate(self, now: float, decay: float) -> float:
        """The EWMA decayed towards zero for the time since its last update.

        Decaying while idle is what makes a once-slow endpoint worth another try
        later (tower's ``RttEstimate::decay``).
        """
        elapsed = now - self.ewma_stamp
        if elapsed <= 0.0:
            return self.ewma_latency
        return self.ewma_latency * math.exp(-elapsed / decay)

    def observe_latency(self, latency: float, now: float, decay: float) -> None:
        """Peak-sensitive EWMA update (finagle/tower ``PeakEwma``).

        A sample above the (decayed) estimate replaces it at once: one slow
        connect makes the endpoint look slow immediately. A lower sample is
        blended in with a weight that grows with the time since the last update,
        so the estimate recovers over about ``decay`` seconds.
        """
        if latency < 0.0:
            latency = 0.0
        if self.latency_samples == 0:
            self.ewma_latency = latency
        else:
            elapsed = now - self.ewma_stamp
            w = math.exp(-elapsed / decay) if elapsed > 0.0 else 1.0
            decayed = self.ewma_latency * w
            self.ewma_latency = latency if latency > decayed else decayed + latency * (1.0 - w)
        self.ewma_stamp = now
        self.latency_samples += 1
