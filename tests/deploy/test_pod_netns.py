"""A pod on one machine: the closest thing to a cluster these tests can run.

A "pod" network namespace has its own localhost, shared by the app and its three
sidecars exactly as the containers of a pod share theirs. Around it, each in a
namespace of its own and reached over a veth pair, are the "hosts": real
PostgreSQL servers for dev, test and prod, and a real etcd.

- the app (demo/app.py, APP_DB_KIND=postgres) only ever connects to
  127.0.0.1:5432 and asks `SHOW cluster_name`, so each answer says which
  environment's server it reached;
- the ambassador listens there and forwards to the current environment; the
  switch is a ConfigMap-style directory written as kubelet writes it, plus
  AMBASSADOR_ENV, as in k8s-manifests/;
- the adapter wraps the app (`adapter run -- python demo/app.py`) with the
  Downward API variables set, and its stdout is what the test reads;
- the watcher watches the app's config directory, sends SIGHUP by pid file,
  probes the app's /healthz and registers it in etcd.

Needs root and `ip` (iproute2); skipped elsewhere with the reason, but never under CI
(pod_network() fails there instead).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.configmap import write_configmap
from demo.procs import Proc
from demo.records import Record, RecordStream, backend_of, field, reached
from tests.support.etcd import etcd_argv
from tests.support.netns import Host, Pod, pod_network
from tests.support.pod import STOP_TIMEOUT, NsProcs, etcd_get, ns_http, wait_until
from tests.support.postgres import PostgresCluster, RunAs, init_cluster
from tests.support.procs import require_binary

pytestmark = [pytest.mark.slow, pytest.mark.netns]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENVS = ("dev", "test", "prod")
#: A bound for "it happened", never a speed expectation.
STEP = 15.0
DOWNWARD = {
    "POD_NAME": "shop-7d4b9c-k2x8p",
    "POD_NAMESPACE": "shop",
    "NODE_NAME": "node-a",
    "CONTAINER_NAME": "app",
}
SERVICE = "shop-app"
ETCD_PORT = 2379


@dataclass
class PodStory:
    pod: Pod
    procs: NsProcs
    switch_dir: Path
    config_dir: Path
    etcd_url: str
    pod_ip: str
    app_pid: int
    ambassador: Proc
    adapter: Proc
    watcher: Proc
    records: RecordStream

    def http(self, method: str, url: str, body: str | None = None) -> tuple[int, str]:
        return ns_http(self.pod.ns, method, url, body)

    def record(self, what: str, predicate: Callable[[Record], bool], since: int = 0) -> Record:
        found = self.records.wait_for(predicate, timeout=STEP, since=since)
        if found is None:
            pytest.fail(f"no adapter record for: {what}\n{self.procs.report()}", pytrace=False)
        return found


def _start_postgres(root: Path, name: str, host: Host, run_as: RunAs) -> PostgresCluster:
    subnet = ipaddress.ip_network(f"{host.address}/30", strict=False)
    cluster = init_cluster(
        root, name, run_as=run_as, listen=host.address, port=5432, netns=host.ns, trust=str(subnet)
    )
    cluster.start()
    return cluster


def _start_etcd(procs: NsProcs, host: Host, datadir: Path) -> str:
    url = f"http://{host.address}:{ETCD_PORT}"
    peer = "http://127.0.0.1:2380"
    procs.start_in(
        "etcd", host.ns, etcd_argv(require_binary("etcd"), "pod-etcd", datadir, url, peer)
    )
    return url


def _has_pid(path: Path) -> bool:
    try:
        return path.read_text().strip().isdigit()
    except OSError:
        return False


def _ready(story_ns: str, admin: str) -> bool:
    return ns_http(story_ns, "GET", f"http://{admin}/readyz")[0] == 200


@pytest.fixture
def pod_story(tmp_path: Path) -> Iterator[PodStory]:
    with pod_network() as pod:
        require_binary("psql")
        require_binary("curl")
        hosts = {name: pod.add_host(name) for name in (*ENVS, "etcd")}
        pg_root = Path(tempfile.mkdtemp(prefix="sidecars-pod-pg-"))
        os.chmod(pg_root, 0o755)  # the unprivileged server user must enter it
        procs = NsProcs(tmp_path)
        clusters: list[PostgresCluster] = []
        run_as = RunAs.detect()
        try:
            etcd_url = _start_etcd(procs, hosts["etcd"], tmp_path / "etcd-data")
            with ThreadPoolExecutor(len(ENVS)) as pool:
                futures = [pool.submit(_start_postgres, pg_root, n, hosts[n], run_as) for n in ENVS]
                for future in futures:
                    try:
                        clusters.append(future.result())
                    except BaseException:
                        # Stop the others before failing; nothing is left behind.
                        for other in futures:
                            if other is not future and other.exception() is None:
                                clusters.append(other.result())
                        raise
            wait_until(
                "etcd answering from the pod",
                lambda: (
                    ns_http(pod.ns, "POST", f"{etcd_url}/v3/kv/range", '{"key":"cA=="}')[0] == 200
                ),
                timeout=STEP,
                procs=procs,
            )
            yield _start_pod(pod, procs, tmp_path, etcd_url, hosts)
        finally:
            procs.stop_all()
            for cluster in clusters:
                cluster.stop(mode="immediate")
            shutil.rmtree(pg_root, ignore_errors=True)


def _start_pod(
    pod: Pod, procs: NsProcs, tmp: Path, etcd_url: str, hosts: dict[str, Host]
) -> PodStory:
    switch_dir = tmp / "env-switch"
    config_dir = tmp / "app-config"
    write_configmap(switch_dir, {"environment": "dev\n"})
    write_configmap(config_dir, {"app.conf": 'greeting = "hello"\n'})
    pod_ip = hosts["etcd"].pod_address  # the pod's address as the hosts see it
    downward = {**DOWNWARD, "POD_IP": pod_ip}

    argv = [str(BIN / "ambassador"), "run", "--listen", "127.0.0.1:5432"]
    for name in ENVS:
        argv += ["--backend", f"{name}={hosts[name].address}:5432"]
    argv += [
        "--env-file", str(switch_dir / "environment"), "--admin", "127.0.0.1:9101",
        "--health-check", "postgres",
    ]  # fmt: skip
    ambassador = procs.start_in(
        "ambassador", pod.ns, argv, env={"AMBASSADOR_ENV": "dev", **downward}
    )
    wait_until(
        "ambassador ready", lambda: _ready(pod.ns, "127.0.0.1:9101"), timeout=STEP, procs=procs
    )

    pid_file = tmp / "app.pid"
    adapter = procs.start_in(
        "adapter",
        pod.ns,
        [
            str(BIN / "adapter"), "run", "--admin", "127.0.0.1:9102",
            "--field", f"service.name={SERVICE}", "--field", "service.environment=dev",
            "--", sys.executable, str(ROOT / "demo" / "app.py"),
        ],
        env={
            **downward,
            "APP_DB": "127.0.0.1:5432",
            "APP_DB_KIND": "postgres",
            "APP_CONFIG": str(config_dir / "app.conf"),
            "APP_PID_FILE": str(pid_file),
            "APP_HTTP": "127.0.0.1:8080",
            "APP_INTERVAL": "0.3",
            "PYTHONUNBUFFERED": "1",
        },
        stdout_pipe=True,
    )  # fmt: skip
    assert adapter.popen.stdout is not None
    records = RecordStream(adapter.popen.stdout)
    wait_until("the app's pid file", lambda: _has_pid(pid_file), timeout=STEP, procs=procs)

    watcher = procs.start_in(
        "watcher",
        pod.ns,
        [
            str(BIN / "watcher"), "run", "--watch", str(config_dir),
            "--signal", "HUP", "--pid-file", str(pid_file),
            "--probe", "http://127.0.0.1:8080/healthz", "--probe-period", "1",
            "--etcd", etcd_url, "--service", SERVICE, "--instance", DOWNWARD["POD_NAME"],
            "--address", f"{pod_ip}:8080", "--environment", "dev",
            # Long enough that a key gone after SIGTERM was revoked, not expired.
            "--ttl", "60",
            "--admin", "127.0.0.1:9103",
        ],
        env=downward,
    )  # fmt: skip
    wait_until("watcher ready", lambda: _ready(pod.ns, "127.0.0.1:9103"), timeout=STEP, procs=procs)
    return PodStory(
        pod=pod,
        procs=procs,
        switch_dir=switch_dir,
        config_dir=config_dir,
        etcd_url=etcd_url,
        pod_ip=pod_ip,
        app_pid=int(pid_file.read_text()),
        ambassador=ambassador,
        adapter=adapter,
        watcher=watcher,
        records=records,
    )


def _queries_after(records: list[Record]) -> list[str | None]:
    return [backend_of(r) for r in records if r.get("message") == "query ok"]


def test_pod_on_one_machine(pod_story: PodStory) -> None:
    story = pod_story

    # 1. The app's queries go through the ambassador to dev's PostgreSQL; records are ECS, enriched.
    first = story.record("a query reaching dev", reached(["dev"]))
    assert field(first, "ecs.version")
    assert field(first, "@timestamp")
    assert field(first, "log.level") == "info"
    assert field(first, "kubernetes.pod.name") == DOWNWARD["POD_NAME"]
    assert field(first, "kubernetes.namespace") == DOWNWARD["POD_NAMESPACE"]
    assert field(first, "kubernetes.node.name") == DOWNWARD["NODE_NAME"]
    assert field(first, "kubernetes.pod.ip") == story.pod_ip
    assert field(first, "kubernetes.container.name") == "app"
    assert field(first, "service.name") == SERVICE
    assert all(b in (None, "dev") for b in _queries_after(story.records.snapshot()))

    # 2. Flip the switch the way kubelet updates the ConfigMap volume: new connections go to test.
    mark = story.records.mark()
    write_configmap(story.switch_dir, {"environment": "test\n"})
    to_test = story.record("a query reaching test after the switch", reached(["test"]), mark)
    later = story.records.wait_for(
        reached(ENVS), timeout=STEP, since=story.records.index_of(to_test) + 1
    )
    assert later is not None and backend_of(later) == "test"
    switched = story.ambassador.log_events("environment switched")
    assert [(e["previous"], e["env"], e["source"]) for e in switched] == [
        ("dev", "test", "env_file")
    ]
    status, body = story.http("GET", "http://127.0.0.1:9101/env")
    assert status == 200 and json.loads(body)["env"] == "test"
    # Once a query reached test, every later one does (each psql is a new connection).
    after_first_test = story.records.snapshot(story.records.index_of(to_test))
    assert set(_queries_after(after_first_test)) <= {"test", None}, _queries_after(after_first_test)

    # 3. The app's traceback comes out as ONE record, not one per line.
    error = story.record("the traceback record", lambda r: field(r, "error.type") is not None)
    assert field(error, "error.type") == "ValueError"
    assert field(error, "log.level") == "error"
    assert field(error, "message") == "something went wrong (on purpose)"
    stack = field(error, "error.stack_trace")
    assert stack.startswith("Traceback (most recent call last):")
    assert "ValueError: demo error number" in stack
    pieces = ("Traceback", "  File ", "ValueError:", "    raise")
    fragments = [
        r for r in story.records.snapshot() if str(r.get("message", "")).startswith(pieces)
    ]
    assert fragments == []

    # 4. A config change: the watcher sends SIGHUP by pid file, the app reloads.
    mark = story.records.mark()
    write_configmap(story.config_dir, {"app.conf": 'greeting = "from the pod"\n'})
    reload = story.record(
        "the app's reload", lambda r: str(r.get("message", "")).startswith("config reloaded"), mark
    )
    assert reload["message"] == "config reloaded, greeting=from the pod"
    assert field(reload, "log.level") == "warn"
    assert field(reload, "kubernetes.pod.name") == DOWNWARD["POD_NAME"]
    audit = story.watcher.log_events("config change")
    assert [(a["outcome"], a["actions"][0]["action"]) for a in audit] == [("success", "signal")]
    assert f"pid {story.app_pid}" in audit[0]["actions"][0]["detail"], audit
    later_query = story.record(
        "a query after the reload", lambda r: field(r, "labels.greeting") == "from the pod", mark
    )
    assert backend_of(later_query) == "test"

    # 5. The watcher registered the app in etcd; the key goes with the watcher's SIGTERM.
    key = f"/services/{SERVICE}/{DOWNWARD['POD_NAME']}"

    def registered() -> bool:
        return etcd_get(story.pod.ns, story.etcd_url, key) is not None

    wait_until("the instance key in etcd", registered, timeout=STEP, procs=story.procs)
    value = etcd_get(story.pod.ns, story.etcd_url, key)
    assert value is not None
    doc = json.loads(value)
    assert (doc["address"], doc["port"]) == (story.pod_ip, 8080), doc
    assert (doc["service"], doc["instance"]) == (SERVICE, DOWNWARD["POD_NAME"]), doc
    assert doc["healthy"] is True and doc["environment"] == "dev", doc
    assert story.watcher.stop(STOP_TIMEOUT) == 0, story.procs.report()
    # The TTL is 60 s: a key gone now was deregistered (lease revoked), not left to expire.
    wait_until(
        "the instance key gone after SIGTERM",
        lambda: not registered(),
        timeout=STEP,
        procs=story.procs,
    )

    # 6. The pod terminates: the adapter forwards SIGTERM to the app and exits with its status.
    assert story.adapter.stop(STOP_TIMEOUT) == 0, story.procs.report()
    story.records.join(5)
    assert story.records.closed
    assert any(str(r.get("message")).startswith("stopping after") for r in story.records.snapshot())
    assert story.ambassador.stop(STOP_TIMEOUT) == 0, story.procs.report()


def test_not_root_skips_with_the_reason_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr("tests.support.netns.os.geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with (
        pytest.raises(pytest.skip.Exception, match="needs root to create network namespaces"),
        pod_network(),
    ):
        pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI but needs root"), pod_network():
        pass


def test_missing_ip_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import netns

    monkeypatch.setattr("tests.support.netns.os.geteuid", lambda: 0)
    monkeypatch.setattr("tests.support.netns.shutil.which", lambda name: None)
    assert netns.netns_unavailable_reason() == (
        "needs `ip` from iproute2 (apt-get install -y iproute2)"
    )
