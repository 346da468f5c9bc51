"""The ambassador's HTTP listener (``protocol = "http"``): llhttp (httptools) on both sides.

Pure cores: ``wire`` (HTTP/1.1 framing: parsers, heads, chunks), ``headers``
(hop-by-hop, request id, trace context, injected headers), ``retry``
(per-request decision, budget), ``pool.PoolBook``, ``deadlines.scan``; trio
shell: ``proxy.HttpProxy`` / ``serve_http_client`` over ``transport``.

Importing this package is cheap: the names below load their module on first
use (PEP 562), so a process without an HTTP listener never imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .headers import HeaderFiles, IdSource, prepare_request_headers, prepare_response_headers
    from .metrics import HttpMetrics
    from .proxy import HttpProxy, Route, serve_http_client
    from .retry import IDEMPOTENT_METHODS, RetryBudget, retry_refusal
    from .settings import HttpSettings, RetrySettings, parse_http_settings

__all__ = [
    "IDEMPOTENT_METHODS",
    "HeaderFiles",
    "HttpMetrics",
    "HttpProxy",
    "HttpSettings",
    "IdSource",
    "RetryBudget",
    "RetrySettings",
    "Route",
    "parse_http_settings",
    "prepare_request_headers",
    "prepare_response_headers",
    "retry_refusal",
    "serve_http_client",
]

_MODULES = {
    "IDEMPOTENT_METHODS": ".retry",
    "HeaderFiles": ".headers",
    "HttpMetrics": ".metrics",
    "HttpProxy": ".proxy",
    "HttpSettings": ".settings",
    "IdSource": ".headers",
    "RetryBudget": ".retry",
    "RetrySettings": ".settings",
    "Route": ".proxy",
    "parse_http_settings": ".settings",
    "prepare_request_headers": ".headers",
    "prepare_response_headers": ".headers",
    "retry_refusal": ".retry",
    "serve_http_client": ".proxy",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # next time a plain attribute
    return value
