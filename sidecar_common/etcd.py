"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), on trio and h11.

Why the gateway and not gRPC: it needs no generated code and no C extension,
and it is served by every etcd >= 3.3 on its client port. Its rules, all
handled here so callers never see them: requests are ``POST`` with a JSON body;
keys and values are base64; int64 fields (lease IDs, revisions, TTLs) are
JSON strings and zero values are omitted; errors come back as an HTTP status
with ``{"error", "code", "message"}`` (gRPC codes); the watch is a streamed
response of newline-separated JSON objects.

Errors are split the trio way: ``EtcdUnavailable`` means "could not talk to
etcd" (refused, reset, timed out, 5xx), worth retrying with backoff;
``EtcdRequestError`` means etcd answered no (``LeaseNotFound`` is the one the
registration cares about: the lease expired while we were cut off).

The registration record shared by the watcher (which writes it) and the
ambassador (which discovers from it) lives here too: :class:`ServiceInstance`;
so does the discovery side: :func:`follow_prefix` keeps a live copy of a
prefix (list, then watch from the next revision, re-list after any failure)
built on the pure :class:`PrefixView`, and :func:`healthy_instances` turns a
copy into the healthy instances.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any, Literal

import trio

from . import httpclient
from .errors import SidecarError
from .jsonlog import log_event
from .retry import Backoff

__all__ = [
    "EtcdClient",
    "EtcdError",
    "EtcdRequestError",
    "EtcdUnavailable",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "PrefixView",
    "ServiceInstance",
    "WatchEvent",
    "follow_prefix",
    "healthy_instances",
    "prefix_range_end",
    "rfc3339",
]

_log = logging.getLogger("sidecar.etcd")

# gRPC status codes the gateway reports in its error body.
_GRPC_NOT_FOUND = 5

# A range answer or watch message larger than this is a bug or an attack; etcd's
# own default request limit is 1.5 MiB per value.
_MAX_BODY = 64 * 1024 * 1024


class EtcdError(SidecarError):
    """Root of the etcd client's errors."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached or did not answer in time: retry with backoff."""


class EtcdRequestError(EtcdError):
    """etcd answered with an error (``status``: HTTP status, ``code``: gRPC code)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"etcd error {status} (grpc code {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class LeaseNotFound(EtcdRequestError):
    """The lease no longer exists (expired or revoked)."""


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """A past-tense fact from a watch: ``key`` was put (with ``value``) or deleted."""

    type: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    etcd's rule: increment the last byte that is not 0xff and cut after it;
    an all-0xff (or empty) prefix means "to the end of the keyspace" (``\\0``).
    """
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


def _int(obj: Mapping[str, Any], name: str) -> int:
    """int64 fields arrive as strings and are omitted when zero."""
    return int(obj.get(name, 0) or 0)


def _kv(obj: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(obj.get("key")).decode("utf-8", "replace"),
        value=_unb64(obj.get("value")),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        lease=_int(obj, "lease"),
    )


class EtcdClient:
    """One etcd endpoint (``http://host:port``); each call is one HTTP request.

    ``request_timeout`` bounds every unary call; a slower answer is
    ``EtcdUnavailable`` (a wedged etcd must look like a down one to the
    retrying caller). Callers add their own cancel scopes for overall deadlines.
    """

    def __init__(self, url: str, *, request_timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.request_timeout = request_timeout

    def __repr__(self) -> str:
        return f"EtcdClient({self.url!r})"

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to ``/v3/<path>`` and return the decoded answer."""
        payload = json.dumps(body).encode()
        headers = [("Content-Type", "application/json")]
        try:
            with trio.fail_after(self.request_timeout):
                resp = await httpclient.request(
                    "POST",
                    f"{self.url}/v3/{path}",
                    headers=headers,
                    body=payload,
                    max_body=_MAX_BODY,
                )
        except trio.TooSlowError:
            raise EtcdUnavailable(
                f"{self.url}: no answer to {path} in {self.request_timeout}s"
            ) from None
        except httpclient.HttpClientError as exc:
            raise EtcdUnavailable(f"{self.url}: {exc}") from None
        return _decode(resp.status, resp.body, path)

    # -- leases ------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        out = await self.call("lease/grant", {"TTL": ttl})
        return Lease(id=_int(out, "ID"), ttl=_int(out, "TTL"))

    async def keepalive(self, lease_id: int) -> int:
        """Refresh the lease once; the remaining TTL, 0 if the lease is gone."""
        out = await self.call("lease/keepalive", {"ID": str(lease_id)})
        result = out.get("result", out)
        return _int(result, "TTL")

    async def revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys vanish at once); an unknown lease is fine."""
        with suppress(LeaseNotFound):
            await self.call("lease/revoke", {"ID": str(lease_id)})

    async def time_to_live(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds, -1 if it does not exist."""
        out = await self.call("lease/timetolive", {"ID": str(lease_id)})
        return int(out.get("TTL", -1))

    # -- keys --------------------------------------------------------------

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int:
        """Put ``key``; attached to ``lease`` if not 0. Returns the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        out = await self.call("kv/put", body)
        return _int(out.get("header", {}), "revision")

    async def get(self, key: str) -> KeyValue | None:
        out = await self.call("kv/range", {"key": _b64(key)})
        kvs = out.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision of that snapshot.

        Start a watch at ``revision + 1`` to miss nothing in between.
        """
        out = await self.call(
            "kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))}
        )
        kvs = [_kv(kv) for kv in out.get("kvs") or []]
        return kvs, _int(out.get("header", {}), "revision")

    async def delete(self, key: str) -> int:
        """Delete ``key``; the number of keys deleted (0 or 1)."""
        out = await self.call("kv/deleterange", {"key": _b64(key)})
        return _int(out, "deleted")

    # -- watch -------------------------------------------------------------

    @asynccontextmanager
    async def watch_prefix(
        self, prefix: str, *, start_revision: int = 0
    ) -> AsyncIterator[AsyncIterator[list[WatchEvent]]]:
        """Watch every key under ``prefix``: ``async with`` it, then ``async for`` batches.

        A context manager rather than a bare async generator so the streamed
        HTTP response is closed by its owner (trio's rule for resources held
        across ``yield``). Each item is the list of events of one etcd revision
        batch. When the stream ends or breaks, iteration raises
        ``EtcdUnavailable``; the caller re-lists with :meth:`range_prefix` and
        watches again from the new revision. ``start_revision`` 0 means "now".
        """
        create: dict[str, Any] = {
            "key": _b64(prefix),
            "range_end": _b64(prefix_range_end(prefix)),
        }
        if start_revision:
            create["start_revision"] = str(start_revision)
        payload = json.dumps({"create_request": create}).encode()
        headers = [("Content-Type", "application/json")]
        try:
            async with httpclient.open_stream(
                "POST", f"{self.url}/v3/watch", headers=headers, body=payload
            ) as (status, _headers, chunks):
                if status != 200:
                    body = b"".join([c async for c in chunks])
                    _decode(status, body, "watch")
                    raise EtcdUnavailable(f"{self.url}: watch answered {status}")
                yield _watch_events(chunks, self.url)
        except httpclient.HttpClientError as exc:
            raise EtcdUnavailable(f"{self.url}: watch: {exc}") from None


async def _watch_events(chunks: AsyncIterator[bytes], url: str) -> AsyncIterator[list[WatchEvent]]:
    """Split the streamed body into JSON messages and turn them into events."""
    buf = b""
    try:
        async for chunk in chunks:
            buf += chunk
            if len(buf) > _MAX_BODY:
                raise EtcdUnavailable(f"{url}: watch message over {_MAX_BODY} bytes")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                events = _watch_message(line, url)
                if events:
                    yield events
    except httpclient.HttpClientError as exc:
        raise EtcdUnavailable(f"{url}: watch broken: {exc}") from None
    if buf.strip():
        events = _watch_message(buf, url)
        if events:
            yield events
    raise EtcdUnavailable(f"{url}: watch stream ended")


def _watch_message(line: bytes, url: str) -> list[WatchEvent]:
    if not line.strip():
        return []
    try:
        msg = json.loads(line)
    except ValueError:
        raise EtcdUnavailable(f"{url}: undecodable watch message") from None
    if "error" in msg:
        err = msg["error"]
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        raise EtcdUnavailable(f"{url}: watch error: {text}")
    result = msg.get("result", {})
    if result.get("canceled"):
        reason = result.get("cancel_reason") or "canceled"
        if result.get("compact_revision"):
            reason += f" (compacted at {result['compact_revision']})"
        raise EtcdUnavailable(f"{url}: watch canceled: {reason}")
    events = []
    for ev in result.get("events") or []:
        kv = ev.get("kv", {})
        events.append(
            WatchEvent(
                type="delete" if ev.get("type") == "DELETE" else "put",
                key=_unb64(kv.get("key")).decode("utf-8", "replace"),
                value=_unb64(kv.get("value")),
                revision=_int(kv, "mod_revision"),
            )
        )
    return events


def _decode(status: int, body: bytes, path: str) -> dict[str, Any]:
    try:
        out = json.loads(body) if body else {}
    except ValueError:
        out = None
    if status >= 500 and not (isinstance(out, dict) and "code" in out):
        raise EtcdUnavailable(f"etcd {path}: HTTP {status}")
    if not isinstance(out, dict):
        raise EtcdUnavailable(f"etcd {path}: HTTP {status} with a body that is not JSON")
    if status != 200:
        code = int(out.get("code", 0) or 0)
        message = str(out.get("message") or out.get("error") or "")
        if code == _GRPC_NOT_FOUND and "lease" in message:
            raise LeaseNotFound(status, code, message)
        if status >= 500 or code in (4, 14):  # DeadlineExceeded, Unavailable
            raise EtcdUnavailable(f"etcd {path}: {message or status}")
        raise EtcdRequestError(status, code, message)
    return out


class PrefixView:
    """The current keys and values under a prefix, rebuilt from a range and watch events.

    Pure: ``reset`` with a range answer, ``apply`` each watch batch; both say
    whether the content changed, so a follower only publishes real changes.
    Events at or below the view's revision are ignored (a watch started at
    ``revision + 1`` never sends them; a reconnect might).
    """

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}
        self.revision = 0

    def reset(self, kvs: Iterable[KeyValue], revision: int) -> bool:
        new = {kv.key: kv.value for kv in kvs}
        changed = new != self.items
        self.items = new
        self.revision = revision
        return changed

    def apply(self, events: Iterable[WatchEvent]) -> bool:
        changed = False
        # Several events of one transaction share a revision: compare with
        # the revision before this batch, not the one just reached.
        base = self.revision
        for ev in events:
            if ev.revision and ev.revision <= base:
                continue
            if ev.type == "put":
                if self.items.get(ev.key) != ev.value:
                    self.items[ev.key] = ev.value
                    changed = True
            elif ev.key in self.items:
                del self.items[ev.key]
                changed = True
            self.revision = max(self.revision, ev.revision)
        return changed


async def follow_prefix(
    client: EtcdClient,
    prefix: str,
    *,
    send_channel: trio.MemorySendChannel[dict[str, bytes]],
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a live copy of ``prefix``: send ``{key: value}`` after each change; never returns.

    Lists the prefix, sends the snapshot, then watches from the next revision
    and sends a new snapshot whenever the content changes. Any failure (etcd
    down, connection broken, watch canceled after a compaction) is retried
    with backoff and jitter, re-listing so nothing is missed. Starts at once
    (``task_status.started()`` before the first list), so an etcd that is
    down does not hold up the caller; the first snapshot arrives when etcd
    answers.
    """
    backoff = backoff or Backoff(initial=0.1, maximum=5.0)
    rng = rng or random.Random()
    view = PrefixView()
    first = True
    attempt = 0
    task_status.started()
    while True:
        try:
            kvs, revision = await client.range_prefix(prefix)
            if view.reset(kvs, revision) or first:
                first = False
                await send_channel.send(dict(view.items))
            attempt = 0
            async with client.watch_prefix(prefix, start_revision=revision + 1) as batches:
                async for events in batches:
                    if view.apply(events):
                        await send_channel.send(dict(view.items))
        except EtcdError as exc:
            delay = backoff.delay(attempt, rng)
            attempt += 1
            log_event(
                _log,
                "etcd prefix follow interrupted; re-listing",
                level=logging.WARNING if attempt > 1 else logging.INFO,
                prefix=prefix,
                error=str(exc),
                retry_in_seconds=round(delay, 3),
            )
            await trio.sleep(delay)


def healthy_instances(snapshot: Mapping[str, bytes]) -> list[ServiceInstance]:
    """The healthy, well-formed instance records of a ``follow_prefix`` snapshot, by key.

    Records that do not decode are skipped (another writer may share the
    prefix); it is the registrar's job to keep its own record valid.
    """
    out = []
    for key in sorted(snapshot):
        try:
            inst = ServiceInstance.from_json(snapshot[key])
        except EtcdError:
            continue
        if inst.healthy:
            out.append(inst)
    return out


@dataclass(frozen=True)
class ServiceInstance:
    """The JSON value at ``<prefix>/<service>/<instance>``: one registered instance.

    Written by the watcher, read by the ambassador's etcd discovery source.
    ``started`` is RFC 3339 UTC. Unknown fields are ignored when decoding so
    the record can grow.
    """

    service: str
    instance: str
    address: str
    port: int
    environment: str = ""
    version: str = ""
    healthy: bool = True
    started: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> ServiceInstance:
        """Decode a value; raises ``EtcdError`` if it is not a valid record."""
        try:
            obj = json.loads(data)
            return cls(
                service=str(obj["service"]),
                instance=str(obj["instance"]),
                address=str(obj["address"]),
                port=int(obj["port"]),
                environment=str(obj.get("environment", "")),
                version=str(obj.get("version", "")),
                healthy=bool(obj.get("healthy", True)),
                started=str(obj.get("started", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"not a service instance record: {exc}") from None

    @staticmethod
    def key(prefix: str, service: str, instance: str) -> str:
        return f"{prefix.rstrip('/')}/{service}/{instance}"


def rfc3339(unix_time: float | None = None) -> str:
    """UTC time as ``2026-11-25T20:30:00Z`` (for ``ServiceInstance.started``)."""
    t = time.time() if unix_time is None else unix_time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
