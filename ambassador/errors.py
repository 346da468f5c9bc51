"""One exception root for the ambassador, split the way the style guide asks.

``AmbassadorError`` derives from the shared ``SidecarError`` so a caller that
handles "anything the sidecars raise on purpose" keeps working. Decisions the
routing core makes (nothing usable, circuit open) are errors a listener turns
into "close the client at once"; a failed health check is an expected outcome
of probing a backend, carried with a human-readable reason for the log.
"""

from __future__ import annotations

from sidecar_common.errors import SidecarError


class AmbassadorError(SidecarError):
    """Root of every error the ambassador raises on purpose."""


class NoHealthyEndpoint(AmbassadorError):
    """No endpoint of the cluster is usable now (unhealthy, ejected or at its limit).

    The listener fails fast on it: the client is closed at once rather than
    left hanging on a backend that is not there.
    """

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        super().__init__(f"no healthy endpoint in {cluster}")


class CircuitOpen(AmbassadorError):
    """A circuit breaker refused admission (over the limit, queue full or queue timeout)."""

    def __init__(self, scope: str, reason: str) -> None:
        self.scope = scope
        self.reason = reason
        super().__init__(f"circuit open for {scope}: {reason}")


class HealthCheckFailed(AmbassadorError):
    """An active health check found the endpoint unusable; ``reason`` says why (for logs)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BridgeClosed(AmbassadorError):
    """The asyncio bridge is not running (closed or never started), so nothing can be run on it."""


class RelayHubFailed(AmbassadorError):
    """The relay hub's thread ended on an error outside any one connection.

    Every connection it relays would stall, so the hub's task raises this and
    the process ends (status 1, the crash logged): the kubelet restarts the
    container and the clients see their connections closed, not hanging.
    """
