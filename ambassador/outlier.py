"""Passive outlier detection: eject an endpoint after consecutive connect failures.

Envoy's consecutive-errors ejection, on connect failures (and, with the L7
listener, on 5xx responses fed the same way):

- ``consecutive_failures`` failures in a row (no success between) eject the
  endpoint for ``base_ejection * n`` seconds, where ``n`` counts its ejections,
  capped at ``max_ejection``: an endpoint that keeps failing as soon as it is
  back stays out longer and longer.
- ``n`` decays by one for every ``base_ejection`` seconds the endpoint spends
  back in rotation (Envoy decrements the multiplier on each interval without an
  ejection), so an endpoint that recovered for good starts from scratch again.
- At most ``max_ejection_percent`` of the cluster's endpoints are ejected at
  once, except that one ejection is always allowed when none is in force
  (Envoy's rule): passive detection must never empty a large cluster, but a
  dead single backend is still taken out so clients fail fast.

Pure: the functions take the endpoint state and ``now`` and mutate only it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar_common.errors import ConfigError

from .endpoint import EndpointState


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Envoy's defaults: 5 failures, 30 s base, 300 s cap, 10 % of the cluster."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 10.0
    #: A passing active health check ends an ejection early (Envoy's
    #: ``successful_active_health_check_uneject_host``).
    uneject_on_health_success: bool = True
    #: False disables passive ejection entirely (failures are still counted).
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ConfigError("consecutive_failures", self.consecutive_failures, "an integer >= 1")
        if not self.base_ejection > 0:
            raise ConfigError("base_ejection", self.base_ejection, "a duration > 0")
        if not self.max_ejection >= self.base_ejection:
            raise ConfigError("max_ejection", self.max_ejection, "a duration >= base_ejection")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigError("max_ejection_percent", self.max_ejection_percent, "0..100")


def ejection_duration(config: OutlierConfig, times_ejected: int) -> float:
    """How long the ``times_ejected``-th ejection lasts (1-based)."""
    return min(config.base_ejection * times_ejected, config.max_ejection)


def ejection_allowed(config: OutlierConfig, ejected_now: int, total: int) -> bool:
    """May one more endpoint be ejected while ``ejected_now`` of ``total`` are?"""
    if ejected_now == 0:
        return total > 0
    return 100.0 * (ejected_now + 1) / total <= config.max_ejection_percent


def count_ejected(endpoints: Iterable[EndpointState], now: float) -> int:
    return sum(1 for ep in endpoints if now < ep.ejected_until)


def record_success(ep: EndpointState) -> None:
    ep.consecutive_failures = 0


def record_failure(
    config: OutlierConfig, ep: EndpointState, now: float, ejected_now: int, total: int
) -> bool:
    """Count one failure; eject the endpoint if it crossed the threshold and the cap allows.

    Returns True when the endpoint was ejected by this call. An endpoint already
    ejected (a connection attempt that started before the ejection) only counts.
    """
    ep.consecutive_failures += 1
    ep.connect_failures_total += 1
    if not config.enabled or now < ep.ejected_until:
        return False
    if ep.consecutive_failures < config.consecutive_failures:
        return False
    if not ejection_allowed(config, ejected_now, total):
        return False
    if ep.times_ejected and math.isfinite(ep.ejected_until):
        # Decay: one step per base_ejection spent back in rotation since the last ejection.
        well_for = now - ep.ejected_until
        ep.times_ejected = max(0, ep.times_ejected - int(well_for // config.base_ejection))
    ep.times_ejected += 1
    ep.ejected_until = now + ejection_duration(config, ep.times_ejected)
    ep.ejections_total += 1
    ep.consecutive_failures = 0
    return True


def uneject(ep: EndpointState, now: float) -> bool:
    """End an ejection early (a passing active check); True if the endpoint was ejected."""
    if now < ep.ejected_until:
        ep.ejected_until = now
        ep.consecutive_failures = 0
        return True
    return False
