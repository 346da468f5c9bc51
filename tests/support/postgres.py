"""Real PostgreSQL clusters for tests: initdb into a temporary directory, a free port, stop by PID.

Each cluster has its own ``cluster_name``, so a test can ask `SHOW cluster_name`
through the ambassador and know which backend it reached. When the tests run as
root the server runs as an unprivileged user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .procs import free_port, require_binary, stop_pid, wait_for_port

PG_USER = "postgres"


def pg_bindir() -> str:
    """The directory of the newest installed PostgreSQL server binaries."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for directory in reversed(candidates):
        if (Path(directory) / "postgres").exists():
            return directory
    return str(Path(require_binary("postgres")).parent)


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account the server runs as (None: the current user)."""

    uid: int | None
    gid: int | None

    @classmethod
    def detect(cls) -> RunAs:
        if os.geteuid() != 0:
            return cls(None, None)
        try:
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_USER,
                ],
                check=True,
            )
            entry = pwd.getpwnam(PG_USER)
        return cls(entry.pw_uid, entry.pw_gid)

    @property
    def extra_groups(self) -> list[int] | None:
        """Drop root's supplementary groups when switching user; None: leave them."""
        return None if self.uid is None else []

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


@dataclass
class PostgresCluster:
    """One real PostgreSQL server started by the tests."""

    name: str
    datadir: Path
    port: int
    bindir: str
    run_as: RunAs
    host: str = "127.0.0.1"
    netns: str | None = None  # run inside this network namespace (tests/support/netns.py)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    replicas: list[PostgresCluster] = field(default_factory=list, repr=False)

    def _in_netns(self, argv: list[str], *, as_server_user: bool) -> tuple[list[str], RunAs]:
        """argv and the account to start it as: the server user, inside ``netns`` when set."""
        nobody_changes = RunAs(None, None)
        if self.netns is None:
            return argv, (self.run_as if as_server_user else nobody_changes)
        prefix = ["ip", "netns", "exec", self.netns]
        if as_server_user and self.run_as.uid is not None:
            prefix += [
                "setpriv",
                f"--reuid={self.run_as.uid}",
                f"--regid={self.run_as.gid}",
                "--clear-groups",
            ]
        return prefix + argv, nobody_changes

    @property
    def log_path(self) -> Path:
        """The server's own log (stderr of the postmaster)."""
        return self.datadir.parent / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def dsn(
        self,
        *,
        user: str = PG_USER,
        dbname: str = "postgres",
        host: str | None = None,
        port: int | None = None,
    ) -> str:
        return f"postgresql://{user}@{host or self.host}:{port or self.port}/{dbname}"

    def start(self, *, timeout: float = 30.0) -> None:
        if self.pid is not None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        argv, account = self._in_netns(
            [f"{self.bindir}/postgres", "-D", str(self.datadir)], as_server_user=True
        )
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=account.uid,
            group=account.gid,
            extra_groups=account.extra_groups,
        )
        log.close()
        if self.netns is None:
            wait_for_port(self.host, self.port, timeout=timeout, proc=self.proc)
        # Accepting TCP is not yet accepting queries (startup/recovery): ask until it answers.
        deadline = time.monotonic() + timeout
        while True:
            res = self._psql_raw("SELECT 1")
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not answering: {res.stderr.strip()}")
            time.sleep(0.1)

    def stop(self, *, mode: str = "fast") -> None:
        """Stop by PID: SIGTERM smart, SIGINT fast, SIGQUIT immediate (PostgreSQL's meanings)."""
        if self.proc is None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        stop_pid(self.proc.pid, sig=sig, timeout=20.0, proc=self.proc)
        self.proc = None

    def promote(self) -> None:
        subprocess.run(
            [f"{self.bindir}/pg_ctl", "promote", "-w", "-D", str(self.datadir)],
            check=True,
            capture_output=True,
            user=self.run_as.uid,
            group=self.run_as.gid,
            extra_groups=self.run_as.extra_groups,
        )
        deadline = time.monotonic() + 30
        while self.psql("SELECT pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not leave recovery")
            time.sleep(0.1)

    def _psql_raw(self, sql: str, *, dbname: str = "postgres") -> subprocess.CompletedProcess[str]:
        argv, _ = self._in_netns(
            [
                require_binary("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            as_server_user=False,
        )
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        """Run ``sql`` with the real psql client and return its unaligned output, stripped."""
        res = self._psql_raw(sql, dbname=dbname)
        if res.returncode != 0:
            raise RuntimeError(f"psql on {self.name} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def make_replica(self, name: str) -> PostgresCluster:
        """A streaming replica of this cluster (pg_basebackup -R), started."""
        datadir = self.datadir.parent.parent / name / "data"
        datadir.parent.mkdir(parents=True)
        self.run_as.chown(datadir.parent)
        subprocess.run(
            [
                f"{self.bindir}/pg_basebackup",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-D",
                str(datadir),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
            check=True,
            capture_output=True,
            user=self.run_as.uid,
            group=self.run_as.gid,
            extra_groups=self.run_as.extra_groups,
        )
        port = free_port()
        with open(datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"port = {port}\ncluster_name = '{name}'\n")
        replica = PostgresCluster(
            name=name, datadir=datadir, port=port, bindir=self.bindir, run_as=self.run_as
        )
        self.replicas.append(replica)  # so the fixture that made this cluster stops them too
        replica.start()
        return replica


def init_cluster(
    root: Path,
    name: str,
    *,
    run_as: RunAs | None = None,
    listen: str = "127.0.0.1",
    port: int | None = None,
    netns: str | None = None,
    trust: str = "127.0.0.1/32",
) -> PostgresCluster:
    """initdb a new cluster named ``name`` under ``root`` (not started).

    ``listen``/``netns``/``trust`` place it on a namespace's address (the pod test);
    by default it listens on 127.0.0.1 on a free port.
    """
    bindir = pg_bindir()
    run_as = run_as or RunAs.detect()
    base = root / name
    base.mkdir(parents=True)
    run_as.chown(base)
    datadir = base / "data"
    subprocess.run(
        [
            f"{bindir}/initdb",
            "-D",
            str(datadir),
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        check=True,
        capture_output=True,
        user=run_as.uid,
        group=run_as.gid,
        extra_groups=run_as.extra_groups,
    )
    port = port or free_port()
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(
            f"""
listen_addresses = '{listen}'
port = {port}
cluster_name = '{name}'
unix_socket_directories = '{base}'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 100
wal_level = replica
max_wal_senders = 5
hot_standby = on
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_connections = on
log_disconnections = on
"""
        )
    with open(datadir / "pg_hba.conf", "w") as hba:
        hba.write(
            f"local all all trust\nhost all all {trust} trust\nhost replication all {trust} trust\n"
        )
    return PostgresCluster(
        name=name,
        datadir=datadir,
        port=port,
        bindir=bindir,
        run_as=run_as,
        host=listen,
        netns=netns,
    )


def _new_root() -> Path:
    # pytest's tmp_path lives under a 0700 directory the unprivileged server user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="sidecars-pg-"))
    os.chmod(root, 0o755)
    return root


@pytest.fixture
def pg_factory() -> Iterator[Callable[[str], PostgresCluster]]:
    """Start clusters by name for one test; every one is stopped by PID afterwards."""
    require_binary("psql")
    root = _new_root()
    started: list[PostgresCluster] = []

    def make(name: str) -> PostgresCluster:
        cluster = init_cluster(root, name)
        cluster.start()
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        for replica in cluster.replicas:
            replica.stop(mode="immediate")
        cluster.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_envs() -> Iterator[dict[str, PostgresCluster]]:
    """Three long-lived clusters standing for dev, test and prod (cluster_name dev/test/prod).

    Shared by the session to save start-up time: tests must not stop them (use pg_factory for that).
    """
    require_binary("psql")
    root = _new_root()
    clusters = {name: init_cluster(root, name) for name in ("dev", "test", "prod")}
    try:
        for cluster in clusters.values():
            cluster.start()
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
