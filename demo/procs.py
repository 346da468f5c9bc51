"""The processes of the pod story: started with their stderr in a log file, stopped by PID.

One piece for both tellings of the story: the demo (``demo.run``, on loopback) and
the pod test (``tests/support/pod.py``, inside network namespaces, which prefixes
each argv with ``ip netns exec NS``). It lives in ``demo/`` because the demo must
run without ``tests/``. Never stopped by name: each process is stopped by the PID
Popen gave us, SIGTERM first (a graceful drain, as kubelet does), SIGKILL after a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .records import Record


@dataclass
class Proc:
    """A process we started; its stderr (and stdout unless piped) goes to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        """The whole log so far, or ``(no log)`` when it cannot be read."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_events(self, message: str) -> list[Record]:
        """This process's own JSON log events (on its stderr) whose message is ``message``."""
        found: list[Record] = []
        for line in self.log_text().splitlines():
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("message") == message:
                found.append(doc)
        return found

    def stop(self, timeout: float) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout``; the exit status (negative: killed)."""
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Procs:
    """Everything a story started, so that all of it is stopped whatever happens.

    ``cwd`` and ``new_session`` apply to every process started; ``stop_timeout``
    bounds each graceful stop.
    """

    logdir: Path
    stop_timeout: float
    cwd: Path | None = None
    new_session: bool = False
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Proc:
        log = self.logdir / f"{name}.log"
        with open(log, "wb") as err:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else err,
                stderr=err,
                env={**os.environ, **(env or {})},
                cwd=self.cwd,
                start_new_session=self.new_session,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[tuple[Proc, int, bool]]:
        """Stop in reverse start order; (process, exit status, whether it had exited already)."""
        stopped = []
        for proc in reversed(self.procs):
            already = proc.popen.poll() is not None
            stopped.append((proc, proc.stop(self.stop_timeout), already))
        return stopped
