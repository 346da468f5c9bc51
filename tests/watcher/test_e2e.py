"""``watcher run`` as a real subprocess against real parts: a ConfigMap volume updated
the way kubelet does it, an app counting SIGHUPs, a reload HTTP server, a real etcd.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from demo.configmap import write_configmap
from sidecar_common.etcd import EtcdClient, ServiceInstance, follow_prefix, healthy_instances
from sidecar_common.metrics import parse_text
from tests.support.etcd import EtcdServer
from tests.support.wait import wait_until

from .conftest import APP_NAME, HupApp, ReloadServer, WatcherProc

pytestmark = pytest.mark.slow

RunWatcher = Callable[..., WatcherProc]
FAST = ["--debounce", "0.2", "--poll-interval", "0.05"]
SECRET = "password=hunter2-do-not-log\n"


def stays(predicate: Callable[[], bool], seconds: float) -> bool:
    """True if ``predicate`` holds throughout ``seconds`` (to show nothing more happens)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not predicate():
            return False
        time.sleep(0.05)
    return True


def test_configmap_update_reloads_exactly_once(
    tmp_path: Path, run_watcher: RunWatcher, hup_app: HupApp, reload_server: ReloadServer
) -> None:
    vol = tmp_path / "config"
    write_configmap(vol, {"app.conf": "level=info\n", "db.secret": SECRET})
    w = run_watcher(
        "--watch", str(vol), "--pid-file", str(hup_app.pid_file),
        "--webhook", reload_server.url + "/-/reload", *FAST,
    )  # fmt: skip
    # A touch without change, then kubelet's atomic update of one key.
    os.utime(vol / "app.conf")
    write_configmap(vol, {"app.conf": "level=debug\n", "db.secret": SECRET})
    wait_until(lambda: hup_app.hups() == 1 and len(reload_server.reloads()) == 1)
    assert stays(lambda: hup_app.hups() == 1 and len(reload_server.reloads()) == 1, 1.0)

    [audit] = w.events("config_change")
    assert audit["path"] == str(vol / "app.conf")
    assert audit["change"] == "modified" and audit["outcome"] == "success"
    assert len(audit["sha256"]) == 64
    assert {a["action"] for a in audit["actions"]} == {"signal", "webhook"}
    # The secret's content never reaches the log, even when that file changes.
    write_configmap(vol, {"app.conf": "level=debug\n", "db.secret": "password=other\n"})
    wait_until(lambda: hup_app.hups() == 2)
    assert b"hunter2" not in w.log_path.read_bytes()
    assert b"password=other" not in w.log_path.read_bytes()

    status, text = w.admin_get("/metrics")
    assert status == 200
    samples = parse_text(text)
    signal_ok = frozenset({("action", "signal"), ("outcome", "success")})
    assert samples[("watcher_reloads_total", signal_ok)] == 2
    assert samples[("watcher_last_change_timestamp_seconds", frozenset())] > 1.7e9


def test_failing_webhook_is_retried_and_a_later_change_still_fires(
    tmp_path: Path, run_watcher: RunWatcher, reload_server: ReloadServer, hup_app: HupApp
) -> None:
    reload_server.fail_first = 2
    conf = tmp_path / "app.conf"
    w = run_watcher(
        "--watch", str(conf), "--process-name", APP_NAME,
        "--webhook", reload_server.url + "/-/reload", *FAST,
    )  # fmt: skip
    conf.write_text("v1")  # a path that appears later is waited for
    wait_until(lambda: len(w.events("config_change")) == 1)
    assert len(reload_server.reloads()) == 3  # failed twice, then succeeded
    [audit] = w.events("config_change")
    assert audit["change"] == "created" and audit["outcome"] == "success"
    webhook = next(a for a in audit["actions"] if a["action"] == "webhook")
    assert webhook["attempts"] == 3
    conf.write_text("v2")
    wait_until(lambda: len(w.events("config_change")) == 2)
    assert len(reload_server.reloads()) == 4 and hup_app.hups() == 2


def test_dead_app_is_reported_not_a_crash(
    tmp_path: Path, run_watcher: RunWatcher, hup_app: HupApp
) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("v1")
    w = run_watcher(
        "--watch", str(conf), "--pid-file", str(hup_app.pid_file),
        "--retries", "3", "--retry-deadline", "5", *FAST,
    )  # fmt: skip
    hup_app.proc.terminate()
    hup_app.proc.wait()
    conf.write_text("v2")
    wait_until(lambda: len(w.events("config_change")) == 1)
    [audit] = w.events("config_change")
    assert audit["outcome"] == "failure"
    assert audit["actions"][0]["attempts"] == 3 and "not running" in audit["actions"][0]["detail"]
    assert w.proc.poll() is None


def test_readyz_follows_the_app_and_registration_marks_it(
    run_watcher: RunWatcher, reload_server: ReloadServer, etcd: EtcdServer
) -> None:
    w = run_watcher(
        "--probe", reload_server.url + "/healthz", "--probe-period", "0.2",
        "--probe-failure-threshold", "2", "--etcd", etcd.url, "--service", "orders",
        "--instance", "pod-1", "--address", "10.0.0.7:8080", "--ttl", "5",
    )  # fmt: skip
    key = "/services/orders/pod-1"

    def registered_healthy() -> bool | None:
        value = etcd.get(key)
        return None if value is None else ServiceInstance.from_json(value).healthy

    wait_until(lambda: w.admin_get("/readyz")[0] == 200 and registered_healthy() is True)
    reload_server.healthy = False
    wait_until(lambda: w.admin_get("/readyz")[0] == 503 and registered_healthy() is False)
    assert "app not healthy" in w.admin_get("/readyz")[1]
    assert [e["healthy"] for e in w.events("health_changed")] == [True, False]
    reload_server.healthy = True
    wait_until(lambda: w.admin_get("/readyz")[0] == 200 and registered_healthy() is True)
    samples = parse_text(w.admin_get("/metrics")[1])
    assert samples[("watcher_probe_failures_total", frozenset())] >= 2
    assert samples[("watcher_probe_duration_seconds_count", frozenset())] >= 3
    assert samples[("watcher_registered", frozenset())] == 1


def test_key_expires_within_the_ttl_after_sigkill(
    run_watcher: RunWatcher, etcd: EtcdServer
) -> None:
    w = run_watcher(
        "--probe", "exec:true", "--probe-period", "0.2", "--etcd", etcd.url,
        "--service", "orders", "--instance", "pod-k", "--address", "10.0.0.8:8080", "--ttl", "2",
    )  # fmt: skip
    key = "/services/orders/pod-k"
    # The key may be written before the first probe result (healthy=false): wait for the probe.
    wait_until(
        lambda: (value := etcd.get(key)) is not None and ServiceInstance.from_json(value).healthy
    )
    record = ServiceInstance.from_json(etcd.get(key) or "")
    assert (record.address, record.port, record.healthy) == ("10.0.0.8", 8080, True)
    os.kill(w.proc.pid, signal.SIGKILL)
    w.proc.wait()
    killed_at = time.monotonic()
    # Nobody keeps the lease alive now: gone within the TTL (plus etcd's tick).
    wait_until(lambda: etcd.get(key) is None, timeout=2 + 2)
    assert time.monotonic() - killed_at <= 4


def test_key_removed_at_once_on_sigterm(run_watcher: RunWatcher, etcd: EtcdServer) -> None:
    w = run_watcher(
        "--etcd", etcd.url, "--service", "orders", "--instance", "pod-t",
        "--address", "10.0.0.9:8080", "--ttl", "60",
    )  # fmt: skip
    key = "/services/orders/pod-t"
    wait_until(lambda: etcd.get(key) is not None)
    os.kill(w.proc.pid, signal.SIGTERM)
    assert w.proc.wait(timeout=10) == 0
    # Revoked, not expired: the TTL is a minute and the key is already gone.
    assert etcd.get(key) is None
    assert w.events("deregistered")


def test_etcd_down_at_start_registers_when_it_comes_up(
    run_watcher: RunWatcher, etcd: EtcdServer
) -> None:
    etcd.stop()
    w = run_watcher(
        "--etcd", etcd.url, "--service", "orders", "--instance", "pod-d",
        "--address", "10.0.0.10:8080", "--ttl", "3",
    )  # fmt: skip
    wait_until(lambda: any("etcd call failed" in e.get("message", "") for e in w.logs()))
    assert w.proc.poll() is None
    etcd.start()
    wait_until(lambda: etcd.get("/services/orders/pod-d") is not None)


async def test_a_follower_sees_watchers_register_and_leave(
    run_watcher: RunWatcher, etcd: EtcdServer
) -> None:
    """Watchers register, a follower (what the ambassador's etcd discovery uses) sees them."""
    client = EtcdClient(etcd.url)
    send, receive = trio.open_memory_channel[dict[str, bytes]](1000)

    async def instances_become(expected: set[str]) -> None:
        with trio.fail_after(20):
            async for snapshot in receive:
                if {i.instance for i in healthy_instances(snapshot)} == expected:
                    return

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: follow_prefix(
                client, "/services/orders/", send_channel=send, task_status=task_status
            )
        )
        await instances_become(set())
        watchers = {}
        for n, name in enumerate(("pod-a", "pod-b"), start=1):
            watchers[name] = run_watcher(
                "--etcd", etcd.url, "--service", "orders", "--instance", name,
                "--address", f"10.0.0.{n}:8080", "--ttl", "2",
            )  # fmt: skip
        await instances_become({"pod-a", "pod-b"})
        os.kill(watchers["pod-a"].proc.pid, signal.SIGTERM)
        await instances_become({"pod-b"})
        os.kill(watchers["pod-b"].proc.pid, signal.SIGKILL)
        await instances_become(set())
        nursery.cancel_scope.cancel()
