"""Active-health state of one endpoint: thresholds over consecutive check results.

Pure: the health-check task (``healthcheck.run_health_checks``) probes the
endpoint and feeds each result here with the current time; this object decides
whether the endpoint's health changed. Thresholds stop one lost probe from
flapping an endpoint out of rotation (``unhealthy_threshold``) and one lucky
probe from putting a sick endpoint back (``healthy_threshold``), as HAProxy's
``rise``/``fall`` do.

The very first result decides at once, whatever the thresholds: an endpoint
starts in ``initial_healthy`` (True by default, so a listener routes before the
first probe has run) and a first failed probe must take it out now, not after
``unhealthy_threshold`` intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar_common.errors import ConfigError


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Thresholds of active health checking (the interval/timeout live in the shell's config)."""

    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    initial_healthy: bool = True

    def __post_init__(self) -> None:
        if self.healthy_threshold < 1:
            raise ConfigError("healthy_threshold", self.healthy_threshold, "an integer >= 1")
        if self.unhealthy_threshold < 1:
            raise ConfigError("unhealthy_threshold", self.unhealthy_threshold, "an integer >= 1")


@dataclass(frozen=True, slots=True)
class Transition:
    """The endpoint's active health changed at ``at``; ``reason`` is the last probe's verdict."""

    healthy: bool
    at: float
    reason: str = ""


class HealthState:
    """Consecutive-result counter of one endpoint with hysteresis."""

    __slots__ = ("_config", "checked", "healthy", "last_reason", "streak")

    def __init__(self, config: HealthConfig) -> None:
        self._config = config
        self.healthy = config.initial_healthy
        #: False until the first result arrived (the first result decides at once).
        self.checked = False
        #: Consecutive results that disagree with ``healthy`` (reset by one that agrees).
        self.streak = 0
        self.last_reason = ""

    def record(self, ok: bool, now: float, reason: str = "") -> Transition | None:
        """Feed one probe result; return the transition it causes, if any."""
        self.last_reason = reason
        if not self.checked:
            self.checked = True
            self.streak = 0
            if ok != self.healthy:
                self.healthy = ok
                return Transition(ok, now, reason)
            return None
        if ok == self.healthy:
            self.streak = 0
            return None
        self.streak += 1
        needed = self._config.healthy_threshold if ok else self._config.unhealthy_threshold
        if self.streak < needed:
            return None
        self.healthy = ok
        self.streak = 0
        return Transition(ok, now, reason)
