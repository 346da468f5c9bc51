"""The ambassador's own admin routes: GET and PUT ``/env``, GET ``/clusters``.

GET /env shows the current environment and the choices; PUT sets it, with the
name as the plain body (``curl -X PUT --data prod``) or JSON ``{"env": "prod"}``.
GET /clusters is what Envoy's admin page of that name answers: every listener's
environments and endpoints with what the balancer knows of each (health,
ejection, connections, latency), as JSON, for a human debugging a pod.
All are loopback-only: the admin server may be bound pod-wide for kubelet
probes, and neither switching a pod's database nor its backends' addresses
belong on the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sidecar_common.admin import AdminApp, Request, Response, json_response

from .switch import EnvSwitch, SwitchResult

if TYPE_CHECKING:
    from .endpoint import EndpointState
    from .listener import ListenerRuntime

__all__ = [
    "EnvRequestError",
    "clusters_report",
    "install_cluster_route",
    "install_env_routes",
    "parse_env_body",
]

# An environment name is short; anything longer is not one (and is not echoed back whole).
_MAX_NAME = 200


class EnvRequestError(ValueError):
    """The PUT body does not name an environment; the message is the JSON reason."""


def parse_env_body(body: bytes, content_type: str | None) -> str:
    """The environment a PUT /env body names: plain text, or a JSON object ``{"env": ...}``."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise EnvRequestError("body is not UTF-8") from None
    is_json = (content_type or "").split(";")[0].strip().lower() == "application/json"
    if is_json or text.startswith(("{", '"')):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise EnvRequestError('body is not valid JSON; send {"env": "<name>"}') from None
        if isinstance(doc, str):
            text = doc.strip()
        elif isinstance(doc, dict) and isinstance(doc.get("env"), str):
            text = doc["env"].strip()
        else:
            raise EnvRequestError('JSON body must be {"env": "<name>"}')
    if not text:
        raise EnvRequestError("empty environment name")
    if len(text) > _MAX_NAME or "\n" in text:
        raise EnvRequestError("not an environment name")
    return text


def install_env_routes(
    app: AdminApp,
    switch: EnvSwitch,
    apply: Callable[[str, str], SwitchResult],
) -> None:
    """Add GET/PUT /env to ``app``; ``apply(name, source)`` performs (logs, counts) a switch."""

    async def get_env(request: Request) -> Response:
        return json_response(200, switch.snapshot())

    async def put_env(request: Request) -> Response:
        try:
            name = parse_env_body(request.body, request.header("content-type"))
        except EnvRequestError as exc:
            return json_response(
                400, {"error": str(exc), "environments": list(switch.environments)}
            )
        result = apply(name, "admin")
        if result.refused:
            return json_response(
                422,
                {
                    "error": result.reason,
                    "env": switch.current,
                    "environments": list(switch.environments),
                },
            )
        body = switch.snapshot()
        body["previous"] = result.previous
        body["result"] = result.result
        return json_response(200, body)

    app.route("GET", "/env", get_env, loopback_only=True)
    app.route("PUT", "/env", put_env, loopback_only=True)


def _endpoint(ep: EndpointState, now: float) -> dict[str, Any]:
    ejected = ep.is_ejected(now)
    return {
        "address": ep.name,
        "usable": ep.usable(now),
        "healthy": ep.healthy,
        "ejected": ejected,
        "ejected_for_seconds": round(ep.ejected_until - now, 3) if ejected else None,
        "times_ejected": ep.times_ejected,
        "active_connections": ep.active,
        # peak-EWMA's connect latency; None until the first connect measured one.
        "latency_ewma_seconds": round(ep.ewma_latency, 6) if ep.latency_samples else None,
        "connects_total": ep.connects_total,
        "connect_failures_total": ep.connect_failures_total,
    }


def clusters_report(
    runtimes: Iterable[ListenerRuntime], current_env: str | None, now: float
) -> dict[str, Any]:
    """GET /clusters: per listener, per environment, what the balancer knows of each endpoint.

    ``now`` is the clock the clusters run on (``trio.current_time()``): an
    ejection is reported with the seconds it has left.
    """
    listeners = []
    for rt in runtimes:
        envs = {}
        for env, cluster in rt.clusters.items():
            envs[env] = {
                "current": env == current_env,
                "endpoints": [_endpoint(ep, now) for ep in cluster.endpoints],
            }
        listeners.append(
            {
                "name": rt.name,
                "protocol": rt.config.protocol,
                "listen": str(rt.config.listen),
                "policy": rt.config.policy,
                "open_connections": len(rt.connections),
                "environments": envs,
            }
        )
    return {"env": current_env, "listeners": listeners}


def install_cluster_route(app: AdminApp, report: Callable[[], dict[str, Any]]) -> None:
    """Add GET /clusters (loopback only) answering ``report()`` as JSON."""

    async def get_clusters(request: Request) -> Response:
        return json_response(200, report())

    app.route("GET", "/clusters", get_clusters, loopback_only=True)
