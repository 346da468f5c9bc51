"""Real logs made by real programs in the test: a Python crash, a JVM exception, nginx, PostgreSQL.

Each sample is produced here, not copied from somewhere, so the tests follow the
formats these programs really write on this machine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapter.pipeline import Pipeline, PipelineConfig, encode_json
from tests.support.postgres import PostgresCluster
from tests.support.procs import free_port, require_binary, stop_pid, wait_for_port

PY_APP = r"""
import logging
FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
logging.basicConfig(format=FORMAT, level=logging.INFO)
log = logging.getLogger("shop.payments")
log.info("starting with password=hunter2")

def charge(amount):
    return amount / 0

try:
    charge(10)
except ZeroDivisionError:
    log.exception("charge failed")

def load():
    try:
        {}["config"]
    except KeyError as exc:
        raise RuntimeError("cannot load config") from exc

load()
"""


def feed_all(
    lines: list[bytes], *, stream: str = "stdout", **kw: Any
) -> tuple[Pipeline, list[dict[str, Any]]]:
    kw.setdefault("environ", {})
    p = Pipeline(PipelineConfig(keep_original=True, **kw))
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        out += p.feed(line, stream=stream, now=i * 0.001, wall=time.time())
    out += p.flush()
    # Every line of the sample is in exactly one record, and every record is JSON.
    assert sum(r["event"]["original"].count("\n") + 1 for r in out) == len(lines)
    for rec in out:
        json.loads(encode_json(rec))
    return p, out


def test_real_python_crash(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(PY_APP)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "app.py")], capture_output=True, timeout=60
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    p, out = feed_all(lines, stream="stderr")
    assert len(out) == 3, [r["message"] for r in out]
    info, handled, crash = out
    assert info["log"] == {"level": "info", "logger": "shop.payments"}
    assert info["message"] == "starting with password=[REDACTED]"
    assert handled["message"] == "charge failed" and handled["log"]["level"] == "error"
    assert handled["error"]["type"] == "ZeroDivisionError"
    assert handled["error"]["message"] == "division by zero"
    assert handled["error"]["stack_trace"].startswith("Traceback (most recent call last):")
    assert "return amount / 0" in handled["error"]["stack_trace"]
    # The uncaught crash: a chained traceback as one record, typed by the exception raised last.
    assert crash["error"]["type"] == "RuntimeError"
    assert crash["error"]["message"] == "cannot load config"
    assert "KeyError: 'config'" in crash["error"]["stack_trace"]
    assert "The above exception was the direct cause" in crash["error"]["stack_trace"]
    assert crash["stream"] == "stderr"
    assert p.stats.by_format == {"python": 2, "plain": 1}


JAVA_APP = """
import java.text.SimpleDateFormat;
import java.util.Date;

public class Main {
    static void inner() {
        throw new IllegalStateException("inner failure");
    }

    static void outer() {
        try {
            inner();
        } catch (IllegalStateException e) {
            throw new RuntimeException("outer failure", e);
        }
    }

    public static void main(String[] args) {
        String now = new SimpleDateFormat("yyyy-MM-dd HH:mm:ss.SSS").format(new Date());
        try {
            outer();
        } catch (RuntimeException e) {
            System.err.println(now + " [main] ERROR com.example.Main - request failed");
            e.printStackTrace();
        }
        outer();
    }
}
"""


def test_real_jvm_exception(tmp_path: Path) -> None:
    javac = require_binary("javac")
    java = require_binary("java")
    (tmp_path / "Main.java").write_text(JAVA_APP)
    subprocess.run([javac, "Main.java"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    proc = subprocess.run(
        [java, "-Xshare:auto", "-cp", str(tmp_path), "Main"], capture_output=True, timeout=120
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    _, out = feed_all(lines, stream="stderr")
    assert len(out) == 2, [r["message"] for r in out]
    logged, uncaught = out
    assert logged["message"] == "request failed"
    assert logged["log"] == {"level": "error", "logger": "com.example.Main"}
    assert logged["process"]["thread"]["name"] == "main"
    assert logged["error"]["type"] == "java.lang.RuntimeException"
    assert logged["error"]["message"] == "outer failure"
    trace = logged["error"]["stack_trace"]
    assert "\tat Main.outer(Main.java" in trace
    assert "Caused by: java.lang.IllegalStateException: inner failure" in trace
    assert "more" in trace.splitlines()[-1]  # "\t... 2 more"
    assert uncaught["error"]["type"] == "java.lang.RuntimeException"
    assert uncaught["process"]["thread"]["name"] == "main"
    assert uncaught["message"].startswith(
        'Exception in thread "main" java.lang.RuntimeException: outer failure'
    )


NGINX_CONF = """
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log combined;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
        location /missing {{ return 404; }}
    }}
}}
"""


def test_real_nginx_access_log(tmp_path: Path) -> None:
    nginx = require_binary("nginx", search=["/usr/sbin"])
    curl = require_binary("curl")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=tmp_path, port=port))
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        base = f"http://127.0.0.1:{port}"
        requests = [
            [curl, "-s", "-o", "/dev/null", "-A", "adapter-test/1.0", f"{base}/items?page=2"],
            [
                curl,
                "-s",
                "-o",
                "/dev/null",
                "-A",
                'quote"agent',
                "-e",
                "http://example.test/from",
                f"{base}/missing",
            ],
            [
                curl,
                "-s",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-d",
                "card=4111111111111111",
                f"{base}/pay?card=4111111111111111",
            ],
        ]
        for cmd in requests:
            subprocess.run(cmd, check=True, timeout=30)
    finally:
        stop_pid(proc.pid, sig=signal.SIGQUIT, proc=proc)
    lines = (tmp_path / "access.log").read_bytes().splitlines()
    assert len(lines) == 3
    p, out = feed_all(lines)
    assert p.stats.by_format == {"access": 3}
    first, second, third = out
    assert first["source"] == {"address": "127.0.0.1", "ip": "127.0.0.1"}
    assert first["http"]["request"]["method"] == "GET"
    assert first["url"] == {"original": "/items?page=2", "path": "/items", "query": "page=2"}
    assert first["http"]["response"]["status_code"] == 200
    assert first["http"]["response"]["body"]["bytes"] == 3
    assert first["user_agent"]["original"] == "adapter-test/1.0"
    assert second["http"]["response"]["status_code"] == 404
    assert second["http"]["request"]["referrer"] == "http://example.test/from"
    assert second["user_agent"]["original"] == "quote\\x22agent"  # nginx's own escaping, kept
    assert third["http"]["request"]["method"] == "POST"
    assert "4111111111111111" not in encode_json(third).decode()  # the card in the URL is masked
    # nginx wrote the time in local time with an offset; ours is UTC and close to now.
    stamp = (
        time.mktime(time.strptime(first["@timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    )
    assert abs(stamp - time.time()) < 300


def test_real_postgresql_server_log(pg_factory: Callable[[str], PostgresCluster]) -> None:
    cluster = pg_factory("adapterlog")
    with pytest.raises(RuntimeError, match="missing_table"):
        cluster.psql("SELECT *\n  FROM missing_table")
    cluster.psql("SELECT 1")
    cluster.stop(mode="fast")
    lines = cluster.log_path.read_bytes().splitlines()
    assert len(lines) >= 5
    p, out = feed_all(lines)
    assert p.stats.parse_failures == 0
    error = next(
        r
        for r in out
        if "missing_table" in r["message"] and r.get("log", {}).get("level") == "error"
    )
    assert error["message"] == 'relation "missing_table" does not exist at character 17'
    assert error["labels"]["session"] == "postgres@postgres"
    assert isinstance(error["process"]["pid"], int)
    statement = next(r for r in out if r.get("labels", {}).get("level") == "STATEMENT")
    assert (
        statement["message"] == "SELECT *\n\t  FROM missing_table"
    )  # the tab-led continuation joined
    ready = [r for r in out if "ready to accept connections" in r["message"]]
    assert ready and ready[0]["log"]["level"] == "info"
    shutdown = [r for r in out if "database system is shut down" in r["message"]]
    assert shutdown and shutdown[0]["@timestamp"].endswith("Z")
