"""The real ambassador in front of real PostgreSQL clusters standing for dev, test and prod.

Clients are the real psql and asyncpg; each asks ``SHOW cluster_name`` to learn
which backend it reached. Switching is done the ways a pod does it: the start
flag or $AMBASSADOR_ENV, a ConfigMap-mounted env file swapped the kubelet way
(``..data`` symlink), and PUT /env.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.postgres import PostgresCluster
from tests.support.procs import free_port, require_binary

from .e2e import AmbassadorProc, http, metrics, sample, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def procs() -> Iterator[list[AmbassadorProc]]:
    started: list[AmbassadorProc] = []
    yield started
    for proc in started:
        proc.stop()


def start(
    procs: list[AmbassadorProc],
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    listeners: int = 1,
) -> AmbassadorProc:
    proc = AmbassadorProc(args, tmp_path, env=env)
    procs.append(proc)
    proc.wait_listening(listeners)
    return proc


def psql(port: int, sql: str = "SHOW cluster_name") -> str:
    """The real psql, through the ambassador on ``port``."""
    res = subprocess.run(
        [require_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
         "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", sql],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"psql through port {port} failed: {res.stderr.strip()}")
    return res.stdout.strip()


async def asyncpg_cluster_name(port: int) -> str:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        return str(await conn.fetchval("SHOW cluster_name"))
    finally:
        await conn.close()


def backends(pg_envs: dict[str, PostgresCluster]) -> list[str]:
    args = []
    for name, cluster in pg_envs.items():
        args += ["--backend", f"{name}=127.0.0.1:{cluster.port}"]
    return args


def kubelet_write(directory: Path, key: str, value: str) -> None:
    """Update a ConfigMap volume the way the kubelet does: new dir, atomic ``..data`` swap."""
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir()
    (stamp / key).write_text(value)
    tmp_link = directory / "..data_tmp"
    os.symlink(stamp.name, tmp_link)
    os.rename(tmp_link, directory / "..data")
    if not (directory / key).is_symlink():
        os.symlink(f"..data/{key}", directory / key)


def test_each_environment_is_reached_by_psql_and_asyncpg(
    pg_envs: dict[str, PostgresCluster], procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    # The environment at start comes from $AMBASSADOR_ENV when --env is absent.
    amb = start(
        procs,
        tmp_path,
        "--listen", f"127.0.0.1:{port}",
        "--protocol", "postgres",
        "--admin", f"127.0.0.1:{admin}",
        *backends(pg_envs),
        env={"AMBASSADOR_ENV": "test"},
    )  # fmt: skip
    assert psql(port) == "test"
    for env in ("dev", "prod", "test"):
        status, _ = http("PUT", f"http://127.0.0.1:{admin}/env", env.encode())
        assert status == 200
        assert psql(port) == env
        assert asyncio.run(asyncpg_cluster_name(port)) == env
    lines = amb.wait_access(7)
    assert [line["env"] for line in lines] == ["test", "dev", "dev", "prod", "prod", "test", "test"]
    assert all(line["outcome"] == "closed" for line in lines)
    # Bytes in the access log and in the metrics agree exactly, per environment.
    values = metrics(admin)
    for env in ("dev", "test", "prod"):
        labels = {"listener": "default", "env": env}
        env_lines = [line for line in lines if line["env"] == env]
        assert sum(line["bytes_in"] for line in env_lines) == sample(
            values, "ambassador_received_bytes_total", **labels
        )
        assert sum(line["bytes_out"] for line in env_lines) == sample(
            values, "ambassador_sent_bytes_total", **labels
        )
        assert sample(values, "ambassador_connections_total", **labels, outcome="closed") == len(
            env_lines
        )
        endpoint = f"127.0.0.1:{pg_envs[env].port}"
        assert lines[[x["env"] for x in lines].index(env)]["endpoint"] == endpoint


def test_env_file_switch_keeps_a_long_transaction_on_the_old_backend(
    pg_envs: dict[str, PostgresCluster], procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    configmap = tmp_path / "configmap"
    configmap.mkdir()
    kubelet_write(configmap, "env", "dev\n")
    amb = start(
        procs,
        tmp_path,
        "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}",
        "--env-file", str(configmap / "env"),
        *backends(pg_envs),
    )  # fmt: skip

    async def scenario() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="postgres"
        )
        tx = conn.transaction()
        await tx.start()
        assert await conn.fetchval("SHOW cluster_name") == "dev"
        await conn.execute("CREATE TEMP TABLE work (n int)")
        await conn.execute("INSERT INTO work VALUES (1)")

        kubelet_write(configmap, "env", "prod\n")
        # New connections reach prod (the ambassador polls the file every 0.2 s).
        wait_until(lambda: psql(port) == "prod", timeout=10, what="switch to prod")

        # The transaction opened before the switch is still on dev, and works.
        assert await conn.fetchval("SHOW cluster_name") == "dev"
        await conn.execute("INSERT INTO work VALUES (2)")
        assert await conn.fetchval("SELECT sum(n) FROM work") == 3
        await tx.commit()
        await conn.close()

    asyncio.run(scenario())
    (switched,) = amb.events("environment switched")
    assert (switched["previous"], switched["env"], switched["source"]) == (
        "dev",
        "prod",
        "env_file",
    )
    assert switched["event"] == "env_switch"

    # A name that is not an environment is refused; prod stays.
    kubelet_write(configmap, "env", "staging\n")
    (refused,) = wait_until(lambda: amb.events("environment switch refused"), what="refusal")
    assert (refused["requested"], refused["env"], refused["source"]) == (
        "staging",
        "prod",
        "env_file",
    )
    assert refused["reason"] == "unknown environment 'staging' (choices: dev, test, prod)"
    assert psql(port) == "prod"
    values = metrics(admin)
    assert (
        sample(values, "ambassador_env_switches_total", result="switched", source="env_file") == 1
    )
    assert sample(values, "ambassador_env_switches_total", result="refused", source="env_file") == 1
    assert sample(values, "ambassador_current_env", env="prod") == 1
    # The access-log line is written just after the client saw the end: wait for it.
    long_line = wait_until(
        lambda: next((line for line in amb.access() if line["env"] == "dev"), None),
        what="the long connection's access-log line",
    )
    assert long_line["outcome"] == "closed"
    assert long_line["endpoint"] == f"127.0.0.1:{pg_envs['dev'].port}"


def test_backend_stopped_mid_traffic_is_ejected_and_new_connections_fail_over(
    pg_envs: dict[str, PostgresCluster],
    pg_factory: Callable[[str], PostgresCluster],
    procs: list[AmbassadorProc],
    tmp_path: Path,
) -> None:
    doomed = pg_factory("doomed")
    survivor = pg_envs["dev"]
    port, admin = free_port(), free_port()
    config = tmp_path / "ambassador.toml"
    config.write_text(
        f"""
env = "dev"
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "pg"
listen = "127.0.0.1:{port}"
protocol = "postgres"
policy = "round_robin"
[listeners.environments]
dev = ["127.0.0.1:{survivor.port}", "127.0.0.1:{doomed.port}"]
[listeners.health_check]
type = "none"
[listeners.outlier]
consecutive_failures = 1
base_ejection = "60s"
max_ejection_percent = 50
"""
    )
    amb = start(procs, tmp_path, "--config", str(config))
    doomed_ep = f"127.0.0.1:{doomed.port}"

    async def scenario() -> None:
        conns = [
            await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
            for _ in range(4)
        ]
        names = [await c.fetchval("SHOW cluster_name") for c in conns]
        assert sorted(names) == ["dev", "dev", "doomed", "doomed"]
        doomed.stop(mode="immediate")
        # Clients of the other endpoint are unaffected.
        for conn, name in zip(conns, names, strict=True):
            if name == "dev":
                assert await conn.fetchval("SELECT 40 + 2") == 42
        # New connections all land on the survivor: the dead endpoint is tried
        # at most once more (then ejected) and that connect is retried.
        for _ in range(4):
            assert await asyncpg_cluster_name(port) == "dev"
        for conn in conns:
            conn.terminate()

    asyncio.run(scenario())
    values = metrics(admin)
    assert (
        sample(values, "ambassador_ejections_total", listener="pg", env="dev", endpoint=doomed_ep)
        == 1
    )
    assert (
        sample(values, "ambassador_endpoint_healthy", listener="pg", env="dev", endpoint=doomed_ep)
        == 0
    )
    (ejected,) = amb.events("endpoint ejected")
    assert ejected["endpoint"] == doomed_ep
    # 4 connections before the stop, 4 after: one access-log line each.
    retried = [line for line in amb.wait_access(8) if line.get("attempts") == 2]
    assert len(retried) == 1 and retried[0]["outcome"] == "closed"
    assert retried[0]["endpoint"] == f"127.0.0.1:{survivor.port}"
    assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200


def test_primary_role_listener_follows_a_promoted_replica(
    pg_factory: Callable[[str], PostgresCluster], procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    primary = pg_factory("primary")
    replica = primary.make_replica("replica")
    try:
        port, admin = free_port(), free_port()
        config = tmp_path / "ambassador.toml"
        config.write_text(
            f"""
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "rw"
listen = "127.0.0.1:{port}"
protocol = "postgres"
[listeners.environments]
prod = ["127.0.0.1:{primary.port}", "127.0.0.1:{replica.port}"]
[listeners.health_check]
type = "postgres"
role = "primary"
interval = "300ms"
timeout = "250ms"
healthy_threshold = 1
unhealthy_threshold = 1
"""
        )
        amb = start(procs, tmp_path, "--config", str(config))
        replica_ep = f"127.0.0.1:{replica.port}"
        # The replica is filtered out by the role check; every client gets the primary.
        wait_until(
            lambda: sample(metrics(admin), "ambassador_endpoint_healthy",
                           listener="rw", env="prod", endpoint=replica_ep) == 0
            and len(amb.events("endpoint unhealthy")) == 1,
            what="replica marked unhealthy",
        )  # fmt: skip
        assert {psql(port) for _ in range(3)} == {"primary"}
        primary.stop(mode="fast")
        replica.promote()
        wait_until(
            lambda: psql_or_none(port) == "replica", timeout=20, what="following the new primary"
        )
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200
        healthy = [e["endpoint"] for e in amb.events("endpoint healthy")]
        assert replica_ep in healthy
    finally:
        replica.stop(mode="immediate")


def psql_or_none(port: int) -> str | None:
    try:
        return psql(port)
    except RuntimeError:
        return None
