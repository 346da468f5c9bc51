"""The command line: settings from flags, env and TOML; one-line errors; the admin server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from adapter.config import AdapterSettings, load
from sidecar_common.errors import ConfigError
from sidecar_common.metrics import parse_text
from tests.support.procs import free_port, stop_pid, wait_for_port

ADAPTER = str(Path(sys.executable).with_name("adapter"))


def run(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ADAPTER, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["run", "--no-such-flag"], {}, "No such option: --no-such-flag"),
        (["run", "--output", "kafka"], {}, "--output"),
        (["run", "--timezone", "Mars/Olympus"], {}, "--timezone"),
        (["run", "--pattern", "(?P<message>"], {}, "--pattern"),
        (["run", "--field", "no-equals-sign"], {}, "--field"),
        (["run", "--format", "nonsense"], {}, "--format"),
        (["run", "--tail", "/tmp/*.log", "--", "true"], {}, "--tail"),
        (["run", "--checkpoint", "/tmp/x.pos"], {}, "--checkpoint"),
        (["run", "--max-line-bytes", "3"], {}, "--max-line-bytes"),
        (["run", "--admin", "nohost:port"], {}, "--admin"),
        (["run"], {"ADAPTER_FORWARD_PORT": "many"}, "ADAPTER_FORWARD_PORT"),
        (["run"], {"ADAPTER_DROP_POLICY": "sometimes"}, "ADAPTER_DROP_POLICY"),
        (["run", "--log-level", "chatty"], {}, "--log-level"),
        (["run", "--config", "/nonexistent/adapter.toml"], {}, "/nonexistent/adapter.toml"),
    ],
)
def test_bad_setting_exits_2_with_one_line(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    proc = run(*args, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("adapter: error: ")
    assert needle in lines[0]
    assert proc.stdout == b""


def test_admin_address_in_use_is_one_line() -> None:
    # Found only once serving starts (after the lean exec): still one line, exit 2.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("run", "--admin", f"127.0.0.1:{port}", stdin=b"hello\n")
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("adapter: error: ")
    assert "--admin" in lines[0] and "in use" in lines[0]


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "adapter.toml"
    config.write_text('schema = "otel"\nforward-tag = "from.file"\nfield = ["service.name=shop"]\n')
    settings = load({"forward_tag": "from.flag"}, config_file=config, env={"ADAPTER_SCHEMA": "ecs"})
    assert (settings.schema, settings.forward_tag, settings.field) == (
        "ecs",
        "from.flag",
        ["service.name=shop"],
    )
    with pytest.raises(ConfigError, match="unknown_key"):
        config.write_text("unknown_key = 1\n")
        load({}, config_file=config, env={})
    assert AdapterSettings().drop_policy == "block"


def test_config_file_shapes_the_records(tmp_path: Path) -> None:
    config = tmp_path / "adapter.toml"
    config.write_text(
        textwrap.dedent(
            """
            field = ["service.name=shop", "service.environment=prod"]
            redact = ["secret-[0-9]+"]
            keep-original = true
            """
        )
    )
    proc = run(
        "run", "--config", str(config), "--log-level", "warning", stdin=b"token secret-1234 used\n"
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert record["service"]["name"] == "shop"
    assert record["service"]["environment"] == "prod"
    assert "secret-1234" not in json.dumps(record)
    assert "event" in record


def test_over_long_lines_are_split_and_counted() -> None:
    proc = run(
        "run", "--max-line-bytes", "32", "--log-level", "warning", stdin=b"x" * 80 + b"\nok\n"
    )
    assert proc.returncode == 0
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "".join(r["message"] for r in records[:3]) == "x" * 80
    assert records[3]["message"] == "ok"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_admin_server_probes_and_metrics() -> None:
    port = free_port()
    child = textwrap.dedent(
        """
        import time
        print("one", flush=True)
        print('{"msg": "two"}', flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [
            ADAPTER,
            "run",
            "--admin",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--max-line-bytes",
            "16",
            "--no-multiline",
            "--",
            sys.executable,
            "-c",
            child + "",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.readline()
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        metrics = parse_text(text)
        assert metrics[("adapter_lines_total", frozenset({("stream", "stdout")}))] == 2
        assert metrics[("adapter_records_total", frozenset({("format", "plain")}))] == 1
        assert metrics[("adapter_records_total", frozenset({("format", "json")}))] == 1
        assert metrics[("adapter_delivered_records_total", frozenset({("output", "stdout")}))] == 2
        assert metrics[("adapter_truncated_lines_total", frozenset())] == 0
        assert ("adapter_output_queue_records", frozenset({("output", "stdout")})) in metrics
        assert ("adapter_multiline_joins_total", frozenset()) in metrics
    finally:
        stop_pid(proc.pid, proc=proc)
        proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM  # forwarded: the child died of it


def test_pattern_alone_selects_the_custom_format() -> None:
    proc = run(
        "run",
        "--log-level",
        "warning",
        "--pattern",
        r"user=(?P<user_name>\w+) did (?P<message>.+)",
        stdin=b"user=ann did login\n",
    )
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert record["message"] == "login"
    assert record["labels"]["user_name"] == "ann"
    proc = run("run", "--format", "json", "--pattern", "(?P<message>.*)")
    assert proc.returncode == 2
    assert b"--pattern" in proc.stderr
