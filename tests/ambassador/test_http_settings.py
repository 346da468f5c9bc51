"""The ``[listeners.http]`` table: values and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambassador.http.settings import HttpSettings, RetrySettings, parse_http_settings
from sidecar_common.errors import ConfigError


def test_defaults_and_values() -> None:
    assert parse_http_settings({}, "http") == HttpSettings()
    got = parse_http_settings(
        {
            "request-timeout": "5s",
            "upstream_host": "api.internal",
            "inject_headers": {"Authorization": "/run/secrets/api/token"},
            "pool_max_idle": 4,
            "keepalive_timeout": 30,
            "retry": {"max_retries": 1, "on_status": [503], "backoff_initial": "10ms"},
        },
        "listeners[2].http",
    )
    assert got.request_timeout == 5.0
    assert got.upstream_host == "api.internal"
    assert got.inject_headers == (("authorization", Path("/run/secrets/api/token")),)
    assert got.pool_max_idle == 4 and got.keepalive_timeout == 30.0
    assert got.retry == RetrySettings(max_retries=1, on_status=(503,), backoff_initial=0.01)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"request_timeout": "soon"}, "h.request_timeout"),
        ({"request_timeout": 0}, "h.request_timeout"),
        ({"timeout": 1}, "h.timeout"),
        ({"upstream_host": "a b"}, "h.upstream_host"),
        ({"inject_headers": {"Bad Header": "/x"}}, "h.inject_headers.Bad Header"),
        ({"inject_headers": {"Content-Length": "/x"}}, "h.inject_headers.Content-Length"),
        ({"inject_headers": {"Authorization": 3}}, "h.inject_headers.Authorization"),
        ({"max_header_bytes": 10}, "h.max_header_bytes"),
        ({"retry": {"max_retries": -1}}, "h.retry.max_retries"),
        ({"retry": {"on_status": [404]}}, "h.retry.on_status[0]"),
        ({"retry": {"backoff_initial": "1s", "backoff_max": "10ms"}}, "h.retry.backoff_max"),
        ({"retry": {"budget": 1}}, "h.retry.budget"),
        ({"pool_max_idle": True}, "h.pool_max_idle"),
    ],
)
def test_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_http_settings(table, "h")
    assert info.value.setting == key
