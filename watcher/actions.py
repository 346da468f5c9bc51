"""Reload actions: signal the app, call its reload URL, or run a command.

Each action makes one *attempt* per call and raises ``ActionError`` when it
fails; ``run_action`` wraps attempts in retries with backoff and jitter under
a deadline, and always returns an ``ActionOutcome`` (a failed reload is
reported, never a crash, and the next change fires again).

Finding the app's process by name reads ``/proc`` (a pod with
``shareProcessNamespace: true`` shows the app's processes to the sidecar);
the pure part, choosing which of the matching processes to signal, is
``select_targets``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from sidecar_common import httpclient
from sidecar_common.errors import SidecarError
from sidecar_common.filewatch import Change
from sidecar_common.jsonlog import log_event
from sidecar_common.retry import Backoff, retry

__all__ = [
    "Action",
    "ActionError",
    "ActionOutcome",
    "ExecAction",
    "ProcInfo",
    "SignalAction",
    "WebhookAction",
    "changed_paths_env",
    "read_proc",
    "run_action",
    "select_targets",
]

log = logging.getLogger("watcher.actions")

# A reload command's output goes into the audit log line only; keep a little.
_OUTPUT_KEEP = 500


class ActionError(SidecarError):
    """One attempt of a reload action failed (the message says why)."""


@dataclass(frozen=True)
class ActionOutcome:
    action: str
    ok: bool
    attempts: int
    detail: str


class Action(Protocol):
    """One kind of reload; ``attempt`` returns a short detail or raises ``ActionError``."""

    name: str

    async def attempt(self, changes: Sequence[Change]) -> str: ...


# ---------------------------------------------------------------------------
# signal


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    argv0: str


def select_targets(procs: Sequence[ProcInfo], name: str, *, own_pid: int) -> list[int]:
    """The pids to signal for process ``name``: the top of each matching tree.

    A process matches if its ``comm`` or the basename of its ``argv[0]`` is
    ``name``. Of a master and its forked workers (nginx, gunicorn) only the
    master is signalled: it is the one that reloads and it tells its workers.
    """
    matches = {
        p.pid: p
        for p in procs
        if p.pid != own_pid and (p.comm == name or os.path.basename(p.argv0) == name)
    }
    return sorted(pid for pid, p in matches.items() if p.ppid not in matches)


def read_proc(proc_root: Path = Path("/proc")) -> list[ProcInfo]:
    """Every process visible in ``proc_root`` (those that vanish meanwhile are skipped)."""
    out = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().rstrip("\n")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # stat is "pid (comm) state ppid ..."; comm may hold spaces and parens.
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) < 2:
            continue
        argv0 = cmdline.split(b"\0", 1)[0].decode("utf-8", "replace")
        out.append(ProcInfo(int(entry.name), int(rest[1]), comm, argv0))
    return out


class SignalAction:
    """Send ``sig`` to the app found by pid file or by process name."""

    def __init__(
        self,
        sig: signal.Signals,
        *,
        pid_file: Path | None = None,
        process_name: str | None = None,
        proc_root: Path = Path("/proc"),
    ) -> None:
        if (pid_file is None) == (process_name is None):
            raise ValueError("exactly one of pid_file and process_name")
        self.sig = sig
        self.pid_file = pid_file
        self.process_name = process_name
        self.proc_root = proc_root
        self.name = "signal"

    def _targets(self) -> list[int]:
        if self.pid_file is not None:
            try:
                text = self.pid_file.read_text().strip()
            except OSError as exc:
                raise ActionError(f"pid file {self.pid_file}: {exc.strerror or exc}") from None
            if not text.isdigit() or int(text) <= 0:
                raise ActionError(f"pid file {self.pid_file} does not hold a pid: {text[:40]!r}")
            return [int(text)]
        assert self.process_name is not None
        pids = select_targets(read_proc(self.proc_root), self.process_name, own_pid=os.getpid())
        if not pids:
            raise ActionError(f"no process named {self.process_name!r}")
        return pids

    async def attempt(self, changes: Sequence[Change]) -> str:
        pids = await trio.to_thread.run_sync(self._targets)
        sent = []
        for pid in pids:
            try:
                os.kill(pid, self.sig)
            except ProcessLookupError:
                continue
            except PermissionError:
                raise ActionError(f"not permitted to signal pid {pid}") from None
            sent.append(pid)
        if not sent:
            raise ActionError(f"process {', '.join(map(str, pids))} is not running")
        return f"sent {self.sig.name} to pid {', '.join(map(str, sent))}"


# ---------------------------------------------------------------------------
# webhook


def webhook_body(changes: Sequence[Change]) -> bytes:
    """What the reload URL receives: paths and digests, never contents."""
    return json.dumps(
        {"changed": [{"path": c.path, "sha256": c.new_digest} for c in changes]},
        separators=(",", ":"),
    ).encode()


class WebhookAction:
    """One HTTP request to the app's reload URL per attempt; success is ``expected_status``."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "POST",
        expected_status: int = 200,
        headers: Sequence[tuple[str, str]] = (),
        attempt_time_limit: float = 5.0,
    ) -> None:
        self.url = url
        self.method = method
        self.expected_status = expected_status
        self.headers = list(headers)
        self.attempt_time_limit = attempt_time_limit
        self.name = "webhook"

    async def attempt(self, changes: Sequence[Change]) -> str:
        headers = list(self.headers)
        body = b""
        if self.method not in ("GET", "HEAD", "DELETE"):
            body = webhook_body(changes)
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", "application/json"))
        try:
            with trio.fail_after(self.attempt_time_limit):
                resp = await httpclient.request(
                    self.method, self.url, headers=headers, body=body, max_body=64 * 1024
                )
        except trio.TooSlowError:
            raise ActionError(f"{self.url}: no answer in {self.attempt_time_limit}s") from None
        except httpclient.HttpClientError as exc:
            raise ActionError(str(exc)) from None
        if resp.status != self.expected_status:
            raise ActionError(
                f"{self.method} {self.url} answered {resp.status}, expected {self.expected_status}"
            )
        return f"{self.method} {self.url} -> {resp.status}"


# ---------------------------------------------------------------------------
# exec


def changed_paths_env(changes: Sequence[Change], base: Mapping[str, str]) -> dict[str, str]:
    """The reload command's environment: ``base`` plus what changed.

    ``WATCHER_CHANGED_PATHS`` holds the changed paths one per line (a path
    may contain spaces or colons, never a newline in practice);
    ``WATCHER_CHANGED_COUNT`` their number.
    """
    env = dict(base)
    env["WATCHER_CHANGED_PATHS"] = "\n".join(c.path for c in changes)
    env["WATCHER_CHANGED_COUNT"] = str(len(changes))
    return env


class ExecAction:
    """Run ``command`` with ``/bin/sh -c``; exit status 0 is success."""

    def __init__(self, command: str, *, attempt_time_limit: float = 60.0) -> None:
        self.command = command
        self.attempt_time_limit = attempt_time_limit
        self.name = "exec"

    async def attempt(self, changes: Sequence[Change]) -> str:
        env = changed_paths_env(changes, os.environ)
        try:
            with trio.fail_after(self.attempt_time_limit):
                proc = await trio.run_process(
                    ["/bin/sh", "-c", self.command],
                    check=False,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    stderr=subprocess.STDOUT,
                    deliver_cancel=_kill,
                )
        except trio.TooSlowError:
            raise ActionError(f"command ran over {self.attempt_time_limit}s; killed") from None
        except OSError as exc:
            raise ActionError(f"cannot run /bin/sh: {exc.strerror or exc}") from None
        output = proc.stdout.decode("utf-8", "replace").strip()[-_OUTPUT_KEEP:]
        if proc.returncode != 0:
            raise ActionError(f"command exited with {proc.returncode}: {output}")
        return "exit status 0"


async def _kill(proc: trio.Process) -> None:
    proc.kill()


# ---------------------------------------------------------------------------
# retries


async def run_action(
    action: Action,
    changes: Sequence[Change],
    *,
    attempts: int,
    backoff: Backoff,
    deadline_seconds: float,
    rng: random.Random | None = None,
) -> ActionOutcome:
    """Attempt ``action`` up to ``attempts`` times with backoff, within ``deadline_seconds``.

    Never raises for a failed reload: the outcome says what happened.
    """
    count = 0
    last_error = "no attempt made"

    async def once() -> str:
        nonlocal count, last_error
        count += 1
        try:
            return await action.attempt(changes)
        except ActionError as exc:
            last_error = str(exc)
            raise

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        log_event(
            log,
            "reload action failed; retrying",
            level=logging.WARNING,
            action=action.name,
            attempt=attempt,
            error=str(exc),
            retry_in_seconds=round(delay, 3),
        )

    with trio.move_on_after(deadline_seconds) as scope:
        try:
            detail = await retry(
                once,
                backoff=backoff,
                attempts=attempts,
                retry_on=(ActionError,),
                on_retry=on_retry,
                rng=rng,
            )
        except ActionError:
            return ActionOutcome(action.name, False, count, last_error)
        return ActionOutcome(action.name, True, count, detail)
    assert scope.cancelled_caught
    return ActionOutcome(
        action.name, False, count, f"deadline of {deadline_seconds}s passed: {last_error}"
    )
