"""Output schemas: the flat partial record becomes an ECS or OpenTelemetry document.

ECS (default): ``@timestamp`` (RFC 3339 UTC), ``log.level`` (normalised),
``message``, ``ecs.version``, then every other field nested by its dotted name
(``http.response.status_code`` -> ``{"http": {"response": {"status_code": ...}}}``);
fields with no ECS home are under ``labels``.

OpenTelemetry (``--schema otel``): the log data model's fields in snake case,
``timestamp``, ``observed_timestamp``, ``severity_text``, ``severity_number``,
``body``, ``trace_id``, ``span_id``, ``attributes`` and ``resource`` (flat
semantic-convention keys such as ``http.request.method``, ``exception.type``,
``k8s.pod.name``), and ``instrumentation_scope.name`` for the logger.
"""

from __future__ import annotations

from typing import Any

from adapter.levels import normalise, severity_number, severity_text
from adapter.timestamps import format_rfc3339

ECS_VERSION = "8.11.0"
Record = dict[str, Any]

_PATHS: dict[str, tuple[str, ...]] = {}


def _path(key: str) -> tuple[str, ...]:
    path = _PATHS.get(key)
    if path is None:
        path = tuple(key.split("."))
        if len(_PATHS) < 4096:
            _PATHS[key] = path
    return path


def nest_into(doc: Record, key: str, value: Any) -> None:
    """Set ``value`` at the dotted ``key`` inside ``doc``, creating objects on the way.

    If something that is not an object is already on the way (a static field ``log`` and a
    parsed ``log.level``), the value goes under ``labels`` with its dotted name instead.
    """
    path = _path(key)
    if len(path) == 1:
        if key in doc and isinstance(doc[key], dict) and isinstance(value, dict):
            doc[key].update(value)
        else:
            doc[key] = value
        return
    node = doc
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            labels = doc.setdefault("labels", {})
            if isinstance(labels, dict):
                labels[key] = value
            return
        node = nxt
    node[path[-1]] = value


def _pop_time_and_level(partial: dict[str, Any]) -> tuple[str, str | None]:
    """Take ``@timestamp`` and ``log.level`` out of ``partial``, normalised.

    A level word that is not one of ours stays visible as ``labels.level``.
    """
    timestamp = format_rfc3339(partial.pop("@timestamp"))
    raw_level = partial.pop("log.level", None)
    level = None
    if raw_level is not None:
        level = normalise(raw_level)
        if level is None:
            labels = partial.setdefault("labels", {})
            if isinstance(labels, dict):
                labels.setdefault("level", raw_level)
    return timestamp, level


def to_ecs(partial: dict[str, Any]) -> Record:
    """An ECS document from a partial record (consumed: do not reuse ``partial``)."""
    timestamp, level = _pop_time_and_level(partial)
    message = partial.pop("message", None)
    # Records of one source have the same fields in the same order, line after line: the
    # nesting of such a shape is compiled once into one dict display (see _Shapes).
    shapes = _SHAPES[(level is not None) + 2 * (message is not None)]
    keys = tuple(partial)
    build = shapes.plans.get(keys, _UNSEEN)
    if build is _UNSEEN:  # (None: seen, and left to the general code)
        build = shapes.learn(keys) if len(shapes.plans) < _PLANS_MAX else None
    if build is not None:
        doc: Record = build(timestamp, level, message, *partial.values())
        return doc
    return _to_ecs(partial, timestamp, level, message)


def _to_ecs_reference(partial: dict[str, Any]) -> Record:
    """:func:`to_ecs` without compiled shapes (what the tests hold the compiled ones to)."""
    timestamp, level = _pop_time_and_level(partial)
    return _to_ecs(partial, timestamp, level, partial.pop("message", None))


def _to_ecs(partial: dict[str, Any], timestamp: str, level: str | None, message: Any) -> Record:
    """The general nesting, for any fields (conflicting names go under labels)."""
    doc: Record = {"@timestamp": timestamp}
    if level is not None:
        doc["log"] = {"level": level}
    if message is not None:
        doc["message"] = message
    doc["ecs"] = {"version": ECS_VERSION}
    paths = _PATHS
    # nest_into inlined for the one- and two-part names that make up most fields (hot path).
    for key, value in partial.items():
        path = paths.get(key) or _path(key)
        if len(path) == 2:
            head = doc.get(path[0])
            if head is None:
                doc[path[0]] = {path[1]: value}
                continue
            if type(head) is dict:
                head[path[1]] = value
                continue
        elif len(path) == 3:
            head = doc.get(path[0])
            if head is None:
                doc[path[0]] = {path[1]: {path[2]: value}}
                continue
            if type(head) is dict:
                mid = head.get(path[1])
                if mid is None:
                    head[path[1]] = {path[2]: value}
                    continue
                if type(mid) is dict:
                    mid[path[2]] = value
                    continue
        elif len(path) == 1 and key not in doc:
            doc[key] = value
            continue
        nest_into(doc, key, value)
    return doc


# Shapes: how often a field tuple is seen before it is compiled, and how many are kept.
_LEARN_AFTER = 4
_PLANS_MAX = 256
_SEEN_MAX = 4096
_FIELDS_MAX = 64


_UNSEEN = object()


class _Var:
    """A placeholder for an argument while a shape's document is laid out."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Shapes:
    """Compiled builders for the field tuples seen often, for one (level?, message?) case.

    A builder is made only for a shape whose names cannot collide (no name is a prefix of
    another, none lands on a value the document already has), so it needs no checks: the
    general code is laid out once on placeholders and the result written as one dict
    display, which gives the same document, in the same key order, as :func:`_to_ecs`.
    """

    def __init__(self, level: bool, message: bool) -> None:
        self.level = level
        self.message = message
        self.plans: dict[tuple[str, ...], Any] = {}
        self.seen: dict[tuple[str, ...], int] = {}

    def learn(self, keys: tuple[str, ...]) -> Any:
        n = self.seen.get(keys, 0) + 1
        if n < _LEARN_AFTER:
            if len(self.seen) >= _SEEN_MAX:
                self.seen.clear()
            self.seen[keys] = n
            return None
        self.seen.pop(keys, None)
        build = self._compile(keys)
        self.plans[keys] = build
        return build

    def _compile(self, keys: tuple[str, ...]) -> Any:
        if len(keys) > _FIELDS_MAX:
            return None
        display = ecs_display(
            keys, [f"v{i}" for i in range(len(keys))], level=self.level, message=self.message
        )
        if display is None:
            return None
        args = ", ".join(["ts", "level", "message", *(f"v{i}" for i in range(len(keys)))])
        source = f"def build({args}):\n    return {display}\n"
        namespace: dict[str, Any] = {}
        exec(compile(source, "<adapter.schema shape>", "exec"), namespace)
        return namespace["build"]


def ecs_display(
    keys: tuple[str, ...] | list[str],
    values: list[str],
    *,
    level: bool,
    message: bool,
    ts: str = "ts",
    level_value: str = "level",
    message_value: str = "message",
) -> str | None:
    """Python source of the ECS document of flat ``keys`` as one dict display, or None.

    ``values`` (and ``ts``, ``level_value``, ``message_value``) are the source of each
    value, e.g. an argument name. None when names could collide (a name that is a prefix
    of another, one landing on a value the document already has): such fields need the
    checks of :func:`_to_ecs`. Otherwise the display builds the same document, in the
    same key order, as :func:`_to_ecs` does on those fields.
    """
    paths = [_path(k) for k in keys]
    heads = {p[0] for p in paths if len(p) > 1}
    singles = {p[0] for p in paths if len(p) == 1}
    if singles & (heads | {"@timestamp", "ecs", "log", "message"}) or heads & {
        "@timestamp",
        "message",
    }:
        return None
    # Lay the document out as _to_ecs would, on placeholders; give up on any collision.
    doc: dict[str, Any] = {"@timestamp": _Var(ts)}
    if level:
        doc["log"] = {"level": _Var(level_value)}
    if message:
        doc["message"] = _Var(message_value)
    doc["ecs"] = {"version": ECS_VERSION}
    for path, value in zip(paths, values, strict=True):
        node = doc
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                return None
            node = nxt
        if path[-1] in node:
            return None
        node[path[-1]] = _Var(value)
    return _render(doc)


def _render(node: Any) -> str:
    if isinstance(node, _Var):
        return node.name
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k!r}: {_render(v)}" for k, v in node.items()) + "}"
    return repr(node)


_SHAPES = (
    _Shapes(False, False),
    _Shapes(True, False),
    _Shapes(False, True),
    _Shapes(True, True),
)


# ECS flat name -> (section, OpenTelemetry name). Section "resource", "attributes" or "top".
_OTEL: dict[str, tuple[str, str]] = {
    "trace.id": ("top", "trace_id"),
    "span.id": ("top", "span_id"),
    "log.logger": ("scope", "name"),
    "process.pid": ("resource", "process.pid"),
    "host.name": ("resource", "host.name"),
    "host.hostname": ("resource", "host.name"),
    "service.name": ("resource", "service.name"),
    "service.version": ("resource", "service.version"),
    "service.environment": ("resource", "deployment.environment.name"),
    "service.namespace": ("resource", "service.namespace"),
    "kubernetes.pod.name": ("resource", "k8s.pod.name"),
    "kubernetes.pod.uid": ("resource", "k8s.pod.uid"),
    "kubernetes.pod.ip": ("resource", "k8s.pod.ip"),
    "kubernetes.namespace": ("resource", "k8s.namespace.name"),
    "kubernetes.node.name": ("resource", "k8s.node.name"),
    "kubernetes.container.name": ("resource", "k8s.container.name"),
    "process.thread.name": ("attributes", "thread.name"),
    "process.thread.id": ("attributes", "thread.id"),
    "source.ip": ("attributes", "client.address"),
    "source.address": ("attributes", "client.address"),
    "http.version": ("attributes", "network.protocol.version"),
    "http.response.body.bytes": ("attributes", "http.response.body.size"),
    "http.request.referrer": ("attributes", "http.request.header.referer"),
    "error.type": ("attributes", "exception.type"),
    "error.message": ("attributes", "exception.message"),
    "error.stack_trace": ("attributes", "exception.stacktrace"),
    "log.origin.file.name": ("attributes", "code.file.path"),
    "log.origin.file.line": ("attributes", "code.line.number"),
    "log.origin.function": ("attributes", "code.function.name"),
    "stream": ("attributes", "log.iostream"),
    "event.original": ("attributes", "log.record.original"),
}


def to_otel(partial: dict[str, Any], observed_ns: int) -> Record:
    """An OpenTelemetry log record (data model fields, snake case) from a partial record."""
    doc: Record = {
        "timestamp": format_rfc3339(partial.pop("@timestamp")),
        "observed_timestamp": format_rfc3339(observed_ns),
    }
    raw_level = partial.pop("log.level", None)
    if raw_level is not None:
        number = severity_number(raw_level)
        doc["severity_text"] = severity_text(raw_level)
        if number is not None:
            doc["severity_number"] = number
    message = partial.pop("message", None)
    if message is not None:
        doc["body"] = message
    attributes: dict[str, Any] = {}
    resource: dict[str, Any] = {}
    for key, value in partial.items():
        if key == "labels" and isinstance(value, dict):
            for label, label_value in value.items():
                attributes.setdefault(label, label_value)
            continue
        section, name = _OTEL.get(key, ("attributes", key))
        if section == "attributes":
            attributes[name] = value
        elif section == "resource":
            resource.setdefault(name, value)
        elif section == "top":
            doc[name] = value
        else:
            doc["instrumentation_scope"] = {"name": value}
    if attributes:
        doc["attributes"] = attributes
    if resource:
        doc["resource"] = resource
    return doc
