"""What one HTTP request carries between the shell and the lane: its route and its outcome.

Plain records shared by ``proxy`` (the trio shell) and ``lane`` (the fast
lane), so a request the lane began can be finished by the shell (``Resume``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..cluster import Cluster
from ..endpoint import EndpointState
from ..tls import UpstreamTLS
from .headers import PreparedRequest
from .retry import Failure
from .wire import RequestHead

__all__ = ["Done", "Exchange", "Failed", "Resume", "Route"]


class Route(NamedTuple):
    """Where requests go now: the current environment's cluster and its upstream TLS.

    Made per request by the listener's ``route()``: a NamedTuple costs a
    fraction of a frozen dataclass to build.
    """

    env: str
    cluster: Cluster
    tls: UpstreamTLS | None = None


@dataclass
class Failed:
    """An attempt failed before anything reached the client: it may be retried."""

    failure: Failure
    status: int
    reason: str


class Done:
    """The exchange is over for the client (a response was sent, or it was aborted)."""

    __slots__ = ("keep_alive", "outcome", "status")

    def __init__(self, status: int, keep_alive: bool, outcome: str = "ok") -> None:
        self.status = status
        self.keep_alive = keep_alive
        self.outcome = outcome


class Exchange:
    """What the access log says about one request."""

    __slots__ = (
        "attempts",
        "bytes_in",
        "bytes_out",
        "env",
        "method",
        "reasons",
        "request_id",
        "target",
        "trace_id",
        "upstream",
    )

    def __init__(self, method: bytes, target: bytes) -> None:
        self.method = method
        self.target = target
        self.request_id = ""
        self.trace_id = ""
        self.env = ""
        self.upstream = ""
        self.attempts = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reasons: list[str] = []


class Resume(NamedTuple):
    """A request the lane began and hands to the shell to finish.

    Its end was read; ``start`` is when it began; ``route`` the environment
    chosen for it (None: none selected). With ``ep`` the shell's first attempt
    goes there (the lane found no idle connection to it). With ``prior`` that
    attempt was made by the lane and failed before anything reached the app:
    the shell decides on a retry as for its own attempts, and ``prepared``/``ex``
    carry the ids and the access-log record on. The request was read to its end
    (``body``: all of it, at most the replay buffer).
    """

    head: RequestHead
    start: float
    route: Route | None
    ep: EndpointState | None = None
    prepared: PreparedRequest | None = None
    ex: Exchange | None = None
    prior: Failed | None = None
    #: The request's body, which the lane read whole (kept for a retry).
    body: bytes = b""
