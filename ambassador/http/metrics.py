"""The HTTP listener's metric families, one set per registry (shared by every HTTP listener)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sidecar_common.metrics import Registry

if TYPE_CHECKING:
    from .proxy import HttpProxy

__all__ = ["DURATION_BUCKETS", "HttpMetrics", "code_class", "method_label"]

#: From a cached answer on loopback (~1 ms) to a slow report (tens of seconds).
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

_by_registry: weakref.WeakKeyDictionary[Registry, HttpMetrics] = weakref.WeakKeyDictionary()


def method_label(method: bytes) -> str:
    """The method as a label; unknown methods become OTHER (bounded label values)."""
    text = method.decode("ascii", "replace").upper()
    return text if text in _METHODS else "OTHER"


def code_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class HttpMetrics:
    """Counters and histograms of every HTTP listener, and the pool gauge read on scrape."""

    @classmethod
    def for_registry(cls, registry: Registry) -> HttpMetrics:
        """The one instance of ``registry`` (families and the pool callback registered once)."""
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = cls(registry)
        return metrics

    def __init__(self, registry: Registry) -> None:
        self.proxies: weakref.WeakSet[HttpProxy] = weakref.WeakSet()
        self.requests = registry.counter(
            "ambassador_http_requests_total",
            "HTTP requests answered, by method and status class.",
            ("listener", "env", "method", "code_class"),
        )
        self.duration = registry.histogram(
            "ambassador_http_request_duration_seconds",
            "Time from the request head to the end of the response.",
            ("listener", "env"),
            buckets=DURATION_BUCKETS,
        )
        self.retries = registry.counter(
            "ambassador_http_retries_total",
            "HTTP request attempts that were retries.",
            ("listener", "env"),
        )
        self.budget_exhausted = registry.counter(
            "ambassador_http_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent.",
            ("listener", "env"),
        )
        self.upstream_failures = registry.counter(
            "ambassador_http_upstream_failures_total",
            "Failed attempts per endpoint (connect, reset, 5xx, timeout).",
            ("listener", "env", "endpoint", "reason"),
        )
        registry.gauge_callback(
            "ambassador_http_pool_connections",
            "Upstream HTTP connections per endpoint: active (in use) and idle (pooled).",
            self._pool,
        )

    def _pool(self) -> Iterable[tuple[dict[str, str], float]]:
        for proxy in list(self.proxies):
            for key, active, idle in proxy.pool.book.counts():
                labels = {"listener": proxy.listener, "env": key.env, "endpoint": key.endpoint}
                yield {**labels, "state": "active"}, float(active)
                yield {**labels, "state": "idle"}, float(idle)
