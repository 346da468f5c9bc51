"""The PostgreSQL fixtures start real clusters that answer as themselves."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.postgres import PostgresCluster


def test_cluster_answers_with_its_name(pg_factory: Callable[[str], PostgresCluster]) -> None:
    cluster = pg_factory("alpha")
    assert cluster.psql("SHOW cluster_name") == "alpha"
    assert cluster.psql("SELECT pg_is_in_recovery()") == "f"
    assert cluster.pid is not None
    cluster.stop()
    assert cluster.pid is None


def test_replica_promotes(pg_factory: Callable[[str], PostgresCluster]) -> None:
    primary = pg_factory("primary")
    primary.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    replica = primary.make_replica("replica")
    try:
        assert replica.psql("SHOW cluster_name") == "replica"
        assert replica.psql("SELECT pg_is_in_recovery()") == "t"
        primary.stop()
        replica.promote()
        assert replica.psql("SELECT x FROM t") == "42"
    finally:
        replica.stop(mode="immediate")
