"""The ambassador's HTTP listener (``protocol = "http"``): h11 on both sides.

Pure cores: ``headers`` (hop-by-hop, request id, trace context, injected
headers), ``retry`` (per-request decision, budget), ``pool.PoolBook``;
trio shell: ``proxy.HttpProxy`` / ``serve_http_client``.
"""

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
