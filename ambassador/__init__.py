"""The ambassador sidecar: local ports forwarded to the current environment's backends.

The public API is re-exported here. The heavy parts (the trio shell in ``app``
and the asyncpg health checks) are not imported by the package itself, so
``import ambassador`` stays cheap for ``ambassador check`` and for tests of the
pure core.
"""

from __future__ import annotations

from .cluster import Cluster
from .config import (
    AmbassadorConfig,
    EnvironmentConfig,
    EtcdDiscoveryConfig,
    HealthCheckConfig,
    LimitsConfig,
    ListenerConfig,
    OutlierSettings,
    from_flags,
    load_config,
    parse_config,
)
from .errors import AmbassadorError, CircuitOpen, HealthCheckFailed, NoHealthyEndpoint
from .relay import RelayCounters, RelayResult, relay
from .switch import EnvSwitch, SwitchResult

__all__ = [
    "AmbassadorConfig",
    "AmbassadorError",
    "CircuitOpen",
    "Cluster",
    "EnvSwitch",
    "EnvironmentConfig",
    "EtcdDiscoveryConfig",
    "HealthCheckConfig",
    "HealthCheckFailed",
    "LimitsConfig",
    "ListenerConfig",
    "NoHealthyEndpoint",
    "OutlierSettings",
    "RelayCounters",
    "RelayResult",
    "SwitchResult",
    "from_flags",
    "load_config",
    "parse_config",
    "relay",
]
