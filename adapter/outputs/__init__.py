"""Where records go: stdout JSON lines or a Fluentd forward collector.

Every output has the same three-method shape, so the app drives them alike:
``run`` (a background task, until cancelled), ``write`` (hand over records;
returns once the output has taken them, which is where backpressure comes
from) and ``drain`` (at exit: deliver what is held, or persist it, by a
deadline). Outputs count in ``OutputStats``; the app publishes the counts as
metrics when scraped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

__all__ = ["Output", "OutputStats", "Record"]

Record = dict[str, Any]


@dataclass
class OutputStats:
    """Counters and gauges of one output (records, not bytes)."""

    delivered: int = 0
    retried: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    queued: int = 0  # taken by the output, not yet delivered
    buffered_memory: int = 0
    buffered_disk: int = 0

    def drop(self, reason: str, records: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + records


class Output(Protocol):
    name: str
    stats: OutputStats

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (writing, sending, retrying); runs until cancelled."""

    async def write(self, records: list[Record]) -> None:
        """Take ``records``; may wait while the output is full (policy ``block``)."""

    async def drain(self, deadline: float) -> None:
        """Deliver everything taken, or persist it, by ``deadline`` (trio time)."""
