"""Collecting the adapter's normalised output while it runs, and waiting for a record.

The adapter writes one JSON record per line on its stdout. A reader thread keeps
every record (in order) so the demo and the pod test can wait for "the first
record after this point that says X" without racing the process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

Record = dict[str, Any]


def field(record: Record, dotted: str) -> Any:
    """``record["a"]["b"]`` for ``"a.b"``; flat keys (``"error.type"``) are accepted too."""
    if dotted in record:
        return record[dotted]
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class RecordStream:
    """Every JSON line read from ``stream`` (non-JSON lines are kept in ``garbage``)."""

    def __init__(self, stream: IO[bytes], *, name: str = "adapter") -> None:
        self.records: list[Record] = []
        self.garbage: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name=f"read-{name}", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    doc = None
                with self._cond:
                    if isinstance(doc, dict):
                        self.records.append(doc)
                    elif line:
                        self.garbage.append(line)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def mark(self) -> int:
        """A position: pass it as ``since`` to wait only for records read after now."""
        with self._cond:
            return len(self.records)

    def index_of(self, record: Record) -> int:
        """The position of ``record`` (this very object) in the stream."""
        with self._cond:
            return next(i for i, r in enumerate(self.records) if r is record)

    def snapshot(self, since: int = 0) -> list[Record]:
        with self._cond:
            return list(self.records[since:])

    def wait_for(
        self, predicate: Callable[[Record], bool], *, timeout: float, since: int = 0
    ) -> Record | None:
        """The first record at or after ``since`` matching ``predicate``; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self.records):
                    record = self.records[index]
                    index += 1
                    if predicate(record):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return None
                self._cond.wait(remaining)

    def join(self, timeout: float) -> None:
        """Wait for the end of the stream (the process closed its stdout)."""
        self._thread.join(timeout)


def backend_of(record: Record) -> str | None:
    """The backend a ``query ok`` record says the app reached (a label, after the adapter)."""
    if record.get("message") != "query ok":
        return None
    for key in ("labels.backend", "backend"):
        value = field(record, key)
        if isinstance(value, str):
            return value
    return None


def reached(backends: Iterable[str]) -> Callable[[Record], bool]:
    wanted = set(backends)
    return lambda record: backend_of(record) in wanted
