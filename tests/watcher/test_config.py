"""Settings of ``watcher run``: sources, precedence, cross-field checks, one-line errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import HostPort
from sidecar_common.settings import load_settings
from watcher.config import PREFIX, WatcherSettings, parse_probe, parse_signal, validate

from .conftest import WATCHER_BIN


def settings(
    cli: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
    config: Path | None = None,
) -> WatcherSettings:
    return load_settings(
        WatcherSettings, prefix=PREFIX, cli=cli or {}, env=env or {}, config_file=config
    )


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    toml = tmp_path / "w.toml"
    toml.write_text(
        'debounce = "2s"\nttl = 20\nwatch = ["/etc/a", "/etc/b"]\nwebhook-method = "PUT"\n'
    )
    s = settings({"debounce": "250ms"}, {"WATCHER_TTL": "30"}, toml)
    assert s.debounce == 0.25
    assert s.ttl == 30
    assert s.watch == ["/etc/a", "/etc/b"]
    assert s.webhook_method == "PUT"
    assert s.admin == HostPort("127.0.0.1", 9103)
    s = settings({}, {"WATCHER_WATCH": "/x,/y"})
    assert s.watch == ["/x", "/y"]


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("http://127.0.0.1:8080/healthz", "http", "http://127.0.0.1:8080/healthz"),
        ("tcp://127.0.0.1:5432", "tcp", "127.0.0.1:5432"),
        ("exec:pg_isready -h 127.0.0.1", "exec", "pg_isready -h 127.0.0.1"),
    ],
)
def test_parse_probe(text: str, kind: str, target: str) -> None:
    spec = parse_probe(text)
    assert (spec.kind, spec.target) == (kind, target)


@pytest.mark.parametrize("bad", ["ftp://x", "tcp://nohost", "tcp://h:0", "exec:", "http://", "x"])
def test_parse_probe_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="--probe"):
        parse_probe(bad)


@pytest.mark.parametrize(
    ("text", "sig"), [("HUP", signal.SIGHUP), ("sigusr1", signal.SIGUSR1), ("15", signal.SIGTERM)]
)
def test_parse_signal(text: str, sig: signal.Signals) -> None:
    assert parse_signal(text) == sig


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({}, "at least one of --watch, --probe or --etcd"),
        ({"watch": ["/x"], "pid_file": "/p", "process_name": "n"}, "--process-name"),
        ({"watch": ["/x"], "pid_file": "/p", "signal": "NOPE"}, "--signal"),
        ({"watch": ["/x"], "webhook": "https://x/"}, "--webhook"),
        (
            {"watch": ["/x"], "webhook": "http://x/", "webhook_header": ["nocolon"]},
            "--webhook-header",
        ),
        ({"etcd": "http://127.0.0.1:2379"}, "--service"),
        ({"etcd": "http://127.0.0.1:2379", "service": "s"}, "--address"),
        ({"etcd": "http://127.0.0.1:2379", "service": "a/b", "address": "h:1"}, "--service"),
        (
            {"etcd": "http://127.0.0.1:2379", "service": "s", "address": "h:1", "prefix": "x"},
            "--prefix",
        ),
        ({"etcd": "http://127.0.0.1:2379", "service": "s", "address": "nope"}, "--address"),
    ],
)
def test_validate_rejects(cli: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(settings(cli))


def test_validate_accepts_a_full_configuration() -> None:
    v = validate(
        settings(
            {
                "watch": ["/etc/app"],
                "pid_file": "/run/app.pid",
                "signal": "USR1",
                "webhook": "http://127.0.0.1:8080/-/reload",
                "webhook_header": ["X-Token: abc"],
                "probe": "tcp://127.0.0.1:8080",
                "etcd": "http://127.0.0.1:2379",
                "service": "orders",
                "address": "10.0.0.7:8080",
            }
        )
    )
    assert v.signal == signal.SIGUSR1
    assert v.webhook_headers == (("X-Token", "abc"),)
    assert v.address == HostPort("10.0.0.7", 8080)
    assert v.instance  # defaults to the host name


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WATCHER_BIN), *args], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--bogus"], "--bogus"),
        (["run", "--watch", "/tmp", "--debounce", "soon"], "--debounce"),
        (["run", "--probe", "ftp://x"], "--probe"),
        (["run", "--watch", "/tmp", "--config", "/no/such.toml"], "--config"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("watcher: error:") and needle in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_env_value_names_the_variable() -> None:
    env = {**os.environ, "WATCHER_PROBE_PERIOD": "x"}
    result = run_cli("run", "--probe", "exec:true", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "WATCHER_PROBE_PERIOD" in lines[0]


def test_unknown_config_key_is_one_line(tmp_path: Path) -> None:
    toml = tmp_path / "w.toml"
    toml.write_text('[watcher]\nprobe = "exec:true"\ndebunce = "1s"\n')
    result = run_cli("run", "--config", str(toml))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "debunce" in result.stderr


def test_help_lists_the_flags() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for flag in (
        "--watch",
        "--webhook",
        "--pid-file",
        "--process-name",
        "--exec",
        "--probe",
        "--etcd",
        "--service",
        "--instance",
        "--address",
        "--ttl",
        "--prefix",
        "--admin",
    ):
        assert flag in result.stdout


def test_admin_address_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--probe", "exec:true", "--admin", f"127.0.0.1:{port}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--admin" in lines[0] and "in use" in lines[0]
