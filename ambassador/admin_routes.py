"""The ambassador's own admin routes: GET and PUT ``/env``.

GET shows the current environment and the choices; PUT sets it, with the name
as the plain body (``curl -X PUT --data prod``) or JSON ``{"env": "prod"}``.
Both are loopback-only: the admin server may be bound pod-wide for kubelet
probes, and switching a pod's database must not be reachable from the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sidecar_common.admin import AdminApp, Request, Response, json_response

from .switch import EnvSwitch, SwitchResult

__all__ = ["EnvRequestError", "install_env_routes", "parse_env_body"]

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
