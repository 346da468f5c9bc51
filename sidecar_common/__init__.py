"""Shared core of the sidecars: what the ambassador, the adapter and the watcher all use.

Settings (flags, environment, TOML), JSON logging, the admin HTTP server and
Prometheus metrics, lifecycle and graceful shutdown, retries with backoff, an
HTTP client, an etcd client and the ConfigMap-aware file watcher.

Names are re-exported lazily (PEP 562): ``import sidecar_common.cli`` must not
pull in trio, h11 and the rest, because a sidecar's idle memory is a budget.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .admin import (
        AdminApp,
        AdminError,
        AdminLimits,
        AdminServer,
        Request,
        Response,
        is_loopback_client,
        json_response,
        serve_admin,
        text_response,
    )
    from .cli import (
        fail,
        run_app,
    )
    from .errors import (
        ConfigError,
        SidecarError,
    )
    from .etcd import (
        EtcdClient,
        EtcdError,
        EtcdRequestError,
        EtcdUnavailable,
        KeyValue,
        Lease,
        LeaseNotFound,
        PrefixView,
        ServiceInstance,
        WatchEvent,
        follow_prefix,
        healthy_instances,
        prefix_range_end,
        rfc3339,
    )
    from .filewatch import (
        Change,
        ChangeTracker,
        DigestCache,
        snapshot_paths,
        watch_paths,
    )
    from .httpclient import (
        HttpClientError,
        HttpResponse,
        StreamedResponse,
        open_stream,
        request,
    )
    from .jsonlog import (
        LEVELS,
        JsonFormatter,
        get_logger,
        log_event,
        setup_logging,
    )
    from .lifecycle import (
        Lifecycle,
        run_sidecar,
        supervise,
    )
    from .metrics import (
        Counter,
        CounterChild,
        Exposition,
        Family,
        Gauge,
        GaugeChild,
        Histogram,
        HistogramChild,
        MetricsParseError,
        Registry,
        escape_label_value,
        parse_exposition,
        parse_text,
    )
    from .netaddr import (
        HostPort,
        IPNetwork,
        address_allowed,
        is_loopback,
        parse_host_port,
        parse_networks,
    )
    from .retry import (
        Backoff,
        retry,
    )
    from .settings import (
        MissingSettingError,
        describe_settings,
        load_settings,
        parse_bool,
        parse_duration,
        read_toml,
        setting_names,
    )

_WHERE: dict[str, str] = {
    "SidecarError": "errors",
    "ConfigError": "errors",
    "fail": "cli",
    "run_app": "cli",
    "HostPort": "netaddr",
    "IPNetwork": "netaddr",
    "address_allowed": "netaddr",
    "is_loopback": "netaddr",
    "parse_host_port": "netaddr",
    "parse_networks": "netaddr",
    "MissingSettingError": "settings",
    "describe_settings": "settings",
    "load_settings": "settings",
    "parse_bool": "settings",
    "parse_duration": "settings",
    "read_toml": "settings",
    "setting_names": "settings",
    "LEVELS": "jsonlog",
    "JsonFormatter": "jsonlog",
    "get_logger": "jsonlog",
    "log_event": "jsonlog",
    "setup_logging": "jsonlog",
    "MetricsParseError": "metrics",
    "CounterChild": "metrics",
    "GaugeChild": "metrics",
    "HistogramChild": "metrics",
    "Family": "metrics",
    "Counter": "metrics",
    "Gauge": "metrics",
    "Histogram": "metrics",
    "Registry": "metrics",
    "escape_label_value": "metrics",
    "Exposition": "metrics",
    "parse_exposition": "metrics",
    "parse_text": "metrics",
    "AdminError": "admin",
    "Request": "admin",
    "Response": "admin",
    "json_response": "admin",
    "text_response": "admin",
    "AdminLimits": "admin",
    "is_loopback_client": "admin",
    "AdminApp": "admin",
    "AdminServer": "admin",
    "serve_admin": "admin",
    "HttpClientError": "httpclient",
    "HttpResponse": "httpclient",
    "StreamedResponse": "httpclient",
    "request": "httpclient",
    "open_stream": "httpclient",
    "Lifecycle": "lifecycle",
    "run_sidecar": "lifecycle",
    "supervise": "lifecycle",
    "Backoff": "retry",
    "retry": "retry",
    "Change": "filewatch",
    "ChangeTracker": "filewatch",
    "DigestCache": "filewatch",
    "snapshot_paths": "filewatch",
    "watch_paths": "filewatch",
    "EtcdClient": "etcd",
    "EtcdError": "etcd",
    "EtcdRequestError": "etcd",
    "EtcdUnavailable": "etcd",
    "KeyValue": "etcd",
    "Lease": "etcd",
    "LeaseNotFound": "etcd",
    "PrefixView": "etcd",
    "ServiceInstance": "etcd",
    "WatchEvent": "etcd",
    "follow_prefix": "etcd",
    "healthy_instances": "etcd",
    "prefix_range_end": "etcd",
    "rfc3339": "etcd",
}

__all__ = [
    "LEVELS",
    "AdminApp",
    "AdminError",
    "AdminLimits",
    "AdminServer",
    "Backoff",
    "Change",
    "ChangeTracker",
    "ConfigError",
    "Counter",
    "CounterChild",
    "DigestCache",
    "EtcdClient",
    "EtcdError",
    "EtcdRequestError",
    "EtcdUnavailable",
    "Exposition",
    "Family",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "HostPort",
    "HttpClientError",
    "HttpResponse",
    "IPNetwork",
    "JsonFormatter",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Lifecycle",
    "MetricsParseError",
    "MissingSettingError",
    "PrefixView",
    "Registry",
    "Request",
    "Response",
    "ServiceInstance",
    "SidecarError",
    "StreamedResponse",
    "WatchEvent",
    "address_allowed",
    "describe_settings",
    "escape_label_value",
    "fail",
    "follow_prefix",
    "get_logger",
    "healthy_instances",
    "is_loopback",
    "is_loopback_client",
    "json_response",
    "load_settings",
    "log_event",
    "open_stream",
    "parse_bool",
    "parse_duration",
    "parse_exposition",
    "parse_host_port",
    "parse_networks",
    "parse_text",
    "prefix_range_end",
    "read_toml",
    "request",
    "retry",
    "rfc3339",
    "run_app",
    "run_sidecar",
    "serve_admin",
    "setting_names",
    "setup_logging",
    "snapshot_paths",
    "supervise",
    "text_response",
    "watch_paths",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
