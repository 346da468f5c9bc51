"""Processes of the pod story: started inside our network namespaces, stopped by PID.

``ip netns exec NS CMD`` enters the namespace and then execs CMD in the same
process (no fork outside batch mode), so the PID we get from Popen is the
sidecar's own: signals reach it directly, as the container runtime's do.
Admin endpoints and etcd are reached with curl run inside a namespace of ours,
never from the root namespace (a 10.231.x address there would leave the machine).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import require_binary


@dataclass
class NsProc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def log_events(self, message: str) -> list[dict[str, Any]]:
        """This process's own JSON log events (its stderr) with this ``message``."""
        found = []
        for line in self.tail(10**7).splitlines():
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("message") == message:
                found.append(doc)
        return found

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout``; the exit status (negative: killed)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


@dataclass
class NsProcs:
    """Every process a test started in its namespaces; ``stop_all`` in reverse order."""

    logdir: Path
    procs: list[NsProc] = field(default_factory=list)

    def start(
        self,
        name: str,
        ns: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> NsProc:
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as err:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else err,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
        proc = NsProc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def report(self) -> str:
        """Every process's log tail, for a failure message."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, status {p.popen.poll()}):\n{p.tail()}" for p in self.procs
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


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_get(ns: str, url: str, key: str) -> str | None:
    """The value at ``key`` from etcd's JSON gateway, asked from inside ``ns``; None if absent."""
    status, body = ns_http(ns, "POST", f"{url}/v3/kv/range", json.dumps({"key": _b64(key)}))
    if status != 200:
        raise RuntimeError(f"etcd range answered {status}: {body}")
    kvs = json.loads(body).get("kvs", [])
    if not kvs:
        return None
    return base64.b64decode(kvs[0].get("value", "")).decode()


def wait_until(
    what: str, check: Callable[[], bool], *, timeout: float, procs: NsProcs | None = None
) -> None:
    """Poll ``check`` until it holds; fail with every log when it never does."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout} s\n{procs.report() if procs else ''}"
            )
        time.sleep(0.1)
