"""Processes of the pod story: started inside our network namespaces, stopped by PID.

``ip netns exec NS CMD`` enters the namespace and then execs CMD in the same
process (no fork outside batch mode), so the PID we get from Popen is the
sidecar's own: signals reach it directly, as the container runtime's do.
Admin endpoints and etcd are reached with curl run inside a namespace of ours,
never from the root namespace (a 10.231.x address there would leave the machine).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from demo.procs import Proc, Procs

from .etcd import b64, range_value
from .procs import require_binary
from .wait import wait_until as shared_wait_until

#: Seconds each process gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0


class NsProcs(Procs):
    """Every process a test started in its namespaces; ``stop_all`` in reverse order."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir, STOP_TIMEOUT)

    def start_in(
        self,
        name: str,
        ns: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Proc:
        """Start ``argv`` inside network namespace ``ns``."""
        return self.start(
            name, ["ip", "netns", "exec", ns, *argv], env=env, stdout_pipe=stdout_pipe
        )

    def report(self) -> str:
        """Every process's log tail, for a failure message."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, status {p.popen.poll()}):\n{p.log_text()[-3000:]}"
            for p in self.procs
        )


def ns_http(
    ns: str, method: str, url: str, body: str | None = None, timeout: float = 5.0
) -> tuple[int, str]:
    """An HTTP request made by curl inside namespace ``ns``: (status, body); 0 = no answer."""
    argv = [
        "ip",
        "netns",
        "exec",
        ns,
        require_binary("curl"),
        "-s",
        "-m",
        str(timeout),
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", body]
    res = subprocess.run([*argv, url], capture_output=True, text=True, timeout=timeout + 5)
    text, _, code = res.stdout.rpartition("\n")
    try:
        return int(code), text
    except ValueError:
        return 0, res.stdout + res.stderr


def etcd_get(ns: str, url: str, key: str) -> str | None:
    """The value at ``key`` from etcd's JSON gateway, asked from inside ``ns``; None if absent."""
    status, body = ns_http(ns, "POST", f"{url}/v3/kv/range", json.dumps({"key": b64(key)}))
    if status != 200:
        raise RuntimeError(f"etcd range answered {status}: {body}")
    return range_value(json.loads(body))


def wait_until(
    what: str, check: Callable[[], bool], *, timeout: float, procs: NsProcs | None = None
) -> None:
    """Poll ``check`` (it runs curl in a namespace: 0.1 s apart) until it holds; fail with
    every log when it never does."""
    shared_wait_until(
        check,
        timeout=timeout,
        step=0.1,
        what=what,
        report=procs.report if procs is not None else None,
    )
