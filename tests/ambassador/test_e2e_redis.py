"""One ambassador, two listeners: PostgreSQL and Redis side by side in one config file.

redis-cli and psql reach the current environment's servers; PUT /env moves both
listeners at once (the switch is global), and editing the config file adds an
environment and switches to it without a restart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresCluster
from tests.support.procs import free_port, require_binary
from tests.support.redis import RedisServer, redis_cli

from .e2e import AmbassadorProc, http, metrics, sample, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def procs() -> Iterator[list[AmbassadorProc]]:
    started: list[AmbassadorProc] = []
    yield started
    for proc in started:
        proc.stop()


def psql(port: int) -> str:
    res = subprocess.run(
        [require_binary("psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
         "-U", "postgres", "-d", "postgres", "-c", "SHOW cluster_name"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return res.stdout.strip()


def config_text(
    admin: int,
    pg_port: int,
    redis_port: int,
    pg: dict[str, PostgresCluster],
    redis: dict[str, RedisServer],
    env: str,
) -> str:
    pg_envs = "\n".join(f'{name} = ["127.0.0.1:{c.port}"]' for name, c in pg.items())
    redis_envs = "\n".join(f'{name} = ["127.0.0.1:{r.port}"]' for name, r in redis.items())
    return f"""
env = "{env}"
admin = "127.0.0.1:{admin}"

[[listeners]]
name = "postgres"
listen = "127.0.0.1:{pg_port}"
protocol = "postgres"
[listeners.environments]
{pg_envs}

[[listeners]]
name = "redis"
listen = "127.0.0.1:{redis_port}"
[listeners.environments]
{redis_envs}
[listeners.health_check]
type = "tcp"
interval = "1s"
timeout = "500ms"
"""


def test_redis_and_postgres_listeners_switch_together(
    pg_envs: dict[str, PostgresCluster],
    redis_factory: Callable[[str], RedisServer],
    procs: list[AmbassadorProc],
    tmp_path: Path,
) -> None:
    redis = {name: redis_factory(name) for name in ("dev", "prod")}
    pg = {name: pg_envs[name] for name in ("dev", "prod")}
    admin, pg_port, redis_port = free_port(), free_port(), free_port()
    config = tmp_path / "ambassador.toml"
    config.write_text(config_text(admin, pg_port, redis_port, pg, redis, "dev"))
    amb = AmbassadorProc(["--config", str(config)], tmp_path)
    procs.append(amb)
    amb.wait_listening(2)

    assert redis_cli("GET", "server:name", port=redis_port) == "dev"
    assert psql(pg_port) == "dev"
    # Writes go through too, to the current environment only.
    assert redis_cli("SET", "greeting", "hello from the app", port=redis_port) == "OK"
    assert redis["dev"].cli("GET", "greeting") == "hello from the app"
    assert redis["prod"].cli("EXISTS", "greeting") == "0"

    status, _ = http("PUT", f"http://127.0.0.1:{admin}/env", b'{"env": "prod"}')
    assert status == 200
    assert redis_cli("GET", "server:name", port=redis_port) == "prod"
    assert psql(pg_port) == "prod"

    # A changed config file: a new environment "test" for both, and env = "test".
    redis["test"] = redis_factory("test")
    pg["test"] = pg_envs["test"]
    config.write_text(config_text(admin, pg_port, redis_port, pg, redis, "test"))
    wait_until(
        lambda: redis_cli("GET", "server:name", port=redis_port) == "test",
        timeout=10,
        what="the config reload to switch to test",
    )
    assert psql(pg_port) == "test"
    (switch,) = [e for e in amb.events("environment switched") if e["source"] == "config"]
    assert (switch["previous"], switch["env"]) == ("prod", "test")
    status, body = http("GET", f"http://127.0.0.1:{admin}/env")
    assert b'"environments": ["dev", "prod", "test"]' in body

    # The access log has one line per connection and per listener; the metrics agree.
    combos = {(lst, env) for lst in ("postgres", "redis") for env in ("dev", "prod", "test")}

    # A line is written once the connection is closed on both sides, just after
    # the client has seen its end: wait for the last ones.
    def all_logged() -> list[dict[str, Any]] | None:
        found = amb.access()
        return found if {(a["listener"], a["env"]) for a in found} >= combos else None

    lines = wait_until(all_logged, what="an access-log line for each listener and environment")
    values = metrics(admin)
    for listener in ("postgres", "redis"):
        for env in ("dev", "prod", "test"):
            mine = [x for x in lines if x["listener"] == listener and x["env"] == env]
            assert mine, (listener, env)
            labels = {"listener": listener, "env": env}
            assert sum(x["bytes_in"] for x in mine) == sample(
                values, "ambassador_received_bytes_total", **labels
            )
            assert sum(x["bytes_out"] for x in mine) == sample(
                values, "ambassador_sent_bytes_total", **labels
            )
    redis_dev = [x for x in lines if x["listener"] == "redis" and x["env"] == "dev"]
    assert [x["endpoint"] for x in redis_dev] == [f"127.0.0.1:{redis['dev'].port}"] * 2
