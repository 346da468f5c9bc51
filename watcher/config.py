"""The watcher's settings: one dataclass filled from flags, WATCHER_* and a TOML file.

``WatcherSettings`` is what ``load_settings`` fills (precedence flag > env >
file > default); ``validate`` then checks what one field alone cannot (a
signal needs a target, a registration needs a service and an address) and
turns strings into parsed values (the probe URL, the signal number), so the
rest of the watcher never sees unparsed input. Every error is a
``ConfigError`` naming the flag, and the CLI prints it as one line.
"""

from __future__ import annotations

import shlex
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import HostPort, parse_host_port

__all__ = ["ProbeSpec", "WatcherSettings", "parse_probe", "parse_signal", "validate"]

PREFIX = "WATCHER"


def _meta(help: str, **extra: object) -> dict[str, object]:
    return {"help": help, **extra}


@dataclass
class WatcherSettings:
    """Every setting of ``watcher run`` (flag ``--x-y``, env ``WATCHER_X_Y``, TOML key ``x_y``)."""

    # Reload on change.
    watch: list[str] = field(
        default_factory=list, metadata=_meta("file or directory to watch (repeatable)")
    )
    debounce: float = field(
        default=0.5, metadata=_meta("seconds a change must be stable", duration=True, max=3600)
    )
    poll_interval: float = field(
        default=0.25,
        metadata=_meta("seconds between polls of the watched paths", duration=True, min=0.01),
    )
    webhook: str | None = field(default=None, metadata=_meta("reload URL (http://)"))
    webhook_method: str = field(default="POST", metadata=_meta("reload request method"))
    webhook_status: int = field(
        default=200, metadata=_meta("expected reload response status", min=100, max=599)
    )
    webhook_header: list[str] = field(
        default_factory=list, metadata=_meta("'Name: value' header on the reload request")
    )
    webhook_timeout: float = field(
        default=5.0, metadata=_meta("seconds per reload request", duration=True, min=0.001)
    )
    signal: str = field(default="HUP", metadata=_meta("signal sent to the app on change"))
    pid_file: Path | None = field(default=None, metadata=_meta("file holding the app's pid"))
    process_name: str | None = field(
        default=None, metadata=_meta("the app's process name (shared process namespace)")
    )
    exec: str | None = field(
        default=None, metadata=_meta("command run on change (WATCHER_CHANGED_PATHS set)")
    )
    exec_timeout: float = field(
        default=60.0, metadata=_meta("seconds a reload command may run", duration=True, min=0.001)
    )
    retries: int = field(
        default=5, metadata=_meta("attempts per reload action, first included", min=1, max=1000)
    )
    retry_deadline: float = field(
        default=30.0,
        metadata=_meta("seconds a reload action may take with its retries", duration=True),
    )
    # Probe.
    probe: str | None = field(
        default=None, metadata=_meta("app probe: http://..., tcp://HOST:PORT or exec:CMD")
    )
    probe_period: float = field(
        default=10.0, metadata=_meta("seconds between probes", duration=True, min=0.01)
    )
    probe_timeout: float = field(
        default=1.0, metadata=_meta("seconds a probe may take", duration=True, min=0.001)
    )
    probe_initial_delay: float = field(
        default=0.0, metadata=_meta("seconds before the first probe", duration=True)
    )
    probe_success_threshold: int = field(
        default=1, metadata=_meta("successes in a row to become healthy", min=1, max=1000)
    )
    probe_failure_threshold: int = field(
        default=3, metadata=_meta("failures in a row to become unhealthy", min=1, max=1000)
    )
    probe_status: int | None = field(
        default=None,
        metadata=_meta("expected HTTP probe status (default: any 200-399)", min=100, max=599),
    )
    # Registration.
    etcd: str | None = field(default=None, metadata=_meta("etcd client URL (http://host:2379)"))
    service: str | None = field(default=None, metadata=_meta("service name to register"))
    instance: str | None = field(
        default=None, metadata=_meta("instance id (default: the host name)")
    )
    address: str | None = field(default=None, metadata=_meta("the app's HOST:PORT to publish"))
    ttl: int = field(default=10, metadata=_meta("lease TTL in seconds", min=2, max=3600))
    prefix: str = field(default="/services", metadata=_meta("etcd key prefix"))
    environment: str = field(default="default", metadata=_meta("environment published"))
    app_version: str = field(default="", metadata=_meta("version published"))
    on_unhealthy: Literal["mark", "remove"] = field(
        default="mark", metadata=_meta("an unhealthy app is marked unhealthy or removed")
    )
    # Sidecar.
    admin: HostPort = field(
        default_factory=lambda: HostPort("127.0.0.1", 9103),
        metadata=_meta("admin HTTP listen address"),
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = field(
        default="info", metadata=_meta("log level")
    )
    drain_deadline: float = field(
        default=10.0, metadata=_meta("seconds to finish on SIGTERM", duration=True)
    )


@dataclass(frozen=True)
class ProbeSpec:
    """A parsed ``--probe``: kind and target."""

    kind: Literal["http", "tcp", "exec"]
    target: str  # the URL, "host:port" or the command
    host_port: HostPort | None = None
    argv: tuple[str, ...] = ()


def parse_probe(text: str, *, setting: str = "--probe") -> ProbeSpec:
    expected = "http://HOST[:PORT]/PATH, tcp://HOST:PORT or exec:COMMAND"
    if text.startswith("http://"):
        split = urlsplit(text)
        try:
            _ = split.port
        except ValueError:
            raise ConfigError(setting, text, expected) from None
        if not split.hostname:
            raise ConfigError(setting, text, expected)
        return ProbeSpec("http", text)
    if text.startswith("tcp://"):
        hp = parse_host_port(text[len("tcp://") :], setting=setting)
        if hp.port == 0:
            raise ConfigError(setting, text, "a TCP port 1-65535")
        return ProbeSpec("tcp", str(hp), host_port=hp)
    if text.startswith("exec:"):
        command = text[len("exec:") :].strip()
        try:
            argv = tuple(shlex.split(command))
        except ValueError:
            raise ConfigError(setting, text, expected) from None
        if not argv:
            raise ConfigError(setting, text, "exec: followed by a command")
        return ProbeSpec("exec", command, argv=argv)
    raise ConfigError(setting, text, expected)


def parse_signal(text: str, *, setting: str = "--signal") -> signal.Signals:
    """``HUP``, ``SIGHUP``, ``hup`` or ``1`` -> ``signal.SIGHUP``."""
    raw = text.strip()
    try:
        if raw.isdigit():
            return signal.Signals(int(raw))
        name = raw.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        return signal.Signals[name]
    except (KeyError, ValueError):
        raise ConfigError(setting, text, "a signal name like HUP, USR1, TERM or a number") from None


def _check_http_url(text: str, setting: str) -> None:
    split = urlsplit(text)
    try:
        _ = split.port
    except ValueError:
        raise ConfigError(setting, text, "an http:// URL") from None
    if split.scheme != "http" or not split.hostname:
        raise ConfigError(setting, text, "an http:// URL")


@dataclass(frozen=True)
class Validated:
    """The settings plus what was parsed out of them."""

    settings: WatcherSettings
    signal: signal.Signals | None
    probe: ProbeSpec | None
    address: HostPort | None
    instance: str
    webhook_headers: tuple[tuple[str, str], ...]


def validate(s: WatcherSettings) -> Validated:
    """Cross-field checks; returns the parsed view or raises ``ConfigError``."""
    if not (s.watch or s.probe or s.etcd):
        raise ConfigError("--watch", None, "at least one of --watch, --probe or --etcd")
    sig: signal.Signals | None = None
    if s.pid_file is not None and s.process_name is not None:
        raise ConfigError("--process-name", s.process_name, "either --pid-file or --process-name")
    if s.pid_file is not None or s.process_name is not None:
        sig = parse_signal(s.signal)
    if s.webhook is not None:
        _check_http_url(s.webhook, "--webhook")
    method = s.webhook_method.strip().upper()
    if not method.isalpha():
        raise ConfigError("--webhook-method", s.webhook_method, "an HTTP method like POST")
    s.webhook_method = method
    headers = []
    for raw in s.webhook_header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
            raise ConfigError("--webhook-header", raw, "'Name: value'")
        headers.append((name.strip(), value.strip()))
    if s.exec is not None and not s.exec.strip():
        raise ConfigError("--exec", s.exec, "a command")
    probe = parse_probe(s.probe) if s.probe is not None else None
    address: HostPort | None = None
    instance = s.instance or socket.gethostname()
    if s.etcd is not None:
        _check_http_url(s.etcd, "--etcd")
        if not s.service:
            raise ConfigError("--service", s.service, "a service name (needed with --etcd)")
        if s.address is None:
            raise ConfigError("--address", None, "HOST:PORT of the app (needed with --etcd)")
        address = parse_host_port(s.address, setting="--address")
        for setting, value in (("--service", s.service), ("--instance", instance)):
            if "/" in value or not value.strip():
                raise ConfigError(setting, value, "a name without '/'")
        if not s.prefix.startswith("/"):
            raise ConfigError("--prefix", s.prefix, "a key prefix starting with '/'")
    elif s.address is not None:
        address = parse_host_port(s.address, setting="--address")
    return Validated(
        settings=s,
        signal=sig,
        probe=probe,
        address=address,
        instance=instance,
        webhook_headers=tuple(headers),
    )
