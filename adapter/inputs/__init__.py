"""Inputs share one dispatcher: bytes in, lines split, records through the pipeline, out.

Each source of lines (stdin, a wrapped app's stdout, its stderr, one tailed
file) gets its own ``LineSplitter`` and its own ``Pipeline``: a traceback on
stderr must not be joined with a line the app printed on stdout meanwhile,
and two files never share a pending multiline record.

The dispatcher owns the only timer: ``run_timer`` sleeps until the earliest
``next_deadline()`` of all pipelines (a cancel scope, re-armed whenever a feed
moves it earlier) and then polls, so a record waiting for a possible
continuation line leaves after the flush timeout, not when the next line comes.
Writes to the output go through a FIFO lock, so records leave in the order
they were completed even while the output applies backpressure.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..lines import Lines, LineSplitter
from ..outputs import Output, Record

__all__ = ["Dispatcher", "PipelineLike", "PipelineTotals", "Source"]


class PipelineLike(Protocol):
    """The part of ``adapter.pipeline.Pipeline`` the shell uses (see docs/adapter-design.md)."""

    stats: Any

    def feed(
        self,
        line: bytes,
        *,
        stream: str = "stdout",
        now: float,
        wall: float,
        truncated: bool = False,
        origin: str | None = None,
    ) -> list[Record]: ...

    def feed_lines(
        self,
        lines: list[bytes],
        *,
        stream: str = "stdout",
        now: float,
        wall: float,
        truncated: Collection[int] = (),
        origin: str | None = None,
    ) -> list[Record]: ...

    def poll(self, now: float) -> list[Record]: ...

    def flush(self) -> list[Record]: ...

    def next_deadline(self) -> float | None: ...


@dataclass
class PipelineTotals:
    """Pipeline counters summed over all sources, including closed ones."""

    lines_in: int = 0
    records_out: int = 0
    multiline_joins: int = 0
    by_format: dict[str, int] = field(default_factory=dict)
    parse_failures: dict[str, int] = field(default_factory=dict)

    def add(self, stats: Any, fmt: str) -> None:
        self.lines_in += int(getattr(stats, "lines_in", 0))
        self.records_out += int(getattr(stats, "records_out", 0))
        self.multiline_joins += int(getattr(stats, "multiline_joins", 0))
        for name, n in dict(getattr(stats, "by_format", {}) or {}).items():
            self.by_format[name] = self.by_format.get(name, 0) + int(n)
        failures = getattr(stats, "parse_failures_by_format", None)
        if failures is None:
            failures = getattr(stats, "parse_failures", 0)
        if isinstance(failures, dict):
            for name, n in failures.items():
                self.parse_failures[name] = self.parse_failures.get(name, 0) + int(n)
        elif failures:
            self.parse_failures[fmt] = self.parse_failures.get(fmt, 0) + int(failures)


@dataclass(eq=False)
class Source:
    """One stream of lines: its splitter, its pipeline and what it has fed so far."""

    stream: str
    splitter: LineSplitter
    pipeline: PipelineLike
    path: str | None = None
    lines: int = 0

    @property
    def idle(self) -> bool:
        """True when every line fed so far has left the pipeline as a record."""
        return self.pipeline.next_deadline() is None


Decorate = Callable[[list[Record], Source], None]


class Dispatcher:
    """Routes lines of every source through its pipeline into one output."""

    def __init__(
        self,
        make_pipeline: Callable[[], PipelineLike],
        output: Output,
        *,
        max_line_bytes: int,
        fmt: str = "auto",
        decorate: Decorate | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._make_pipeline = make_pipeline
        self.output = output
        self._max_line_bytes = max_line_bytes
        self._fmt = fmt
        self._decorate = decorate
        self._wall = wall
        self.sources: list[Source] = []
        self._retired = PipelineTotals()
        self._retired_lines: dict[str, int] = {}
        self._retired_truncated = 0
        self._changed = trio.Event()
        self._armed = math.inf  # the deadline the timer sleeps until
        self._write_lock = trio.Lock()
        self._backlog: deque[Record] = deque()

    # -- sources -------------------------------------------------------------

    def open(self, stream: str, *, path: str | None = None) -> Source:
        source = Source(stream, LineSplitter(self._max_line_bytes), self._make_pipeline(), path)
        self.sources.append(source)
        return source

    async def feed(self, source: Source, data: bytes | bytearray) -> None:
        """Bytes read from ``source``; returns once their records are taken by the output."""
        await self._lines(source, source.splitter.feed(data), [])

    async def end_partial(self, source: Source) -> None:
        """Emit ``source``'s unterminated last line as a line (its file was truncated)."""
        await self._lines(source, source.splitter.eof(), [])

    async def close(self, source: Source, *, partial: bool = True) -> None:
        """End of ``source``: its last partial line (if ``partial``) and pending records out.

        The tail input passes ``partial=False`` at exit: an unterminated last
        line is left for the next start (its offset is not checkpointed past it).
        """
        lines = source.splitter.eof() if partial else Lines()
        records: list[Record] = []
        await self._lines(source, lines, records, flush=True)
        if source in self.sources:
            self.sources.remove(source)
            self._retired.add(source.pipeline.stats, self._fmt)
            self._retired_lines[source.stream] = (
                self._retired_lines.get(source.stream, 0) + source.lines
            )
            self._retired_truncated += source.splitter.truncated_lines

    async def close_all(self) -> None:
        for source in list(self.sources):
            await self.close(source)
        await self._write(None, [])

    async def _lines(
        self, source: Source, lines: Lines, records: list[Record], *, flush: bool = False
    ) -> None:
        pipeline = source.pipeline
        if lines.data:
            # The whole read in one call: the pipeline loops over the lines itself.
            records += pipeline.feed_lines(
                lines.data,
                stream=source.stream,
                now=trio.current_time(),
                wall=self._wall(),
                truncated=lines.truncated,
                origin=source.path,
            )
            source.lines += len(lines.data)
        if flush:
            records += pipeline.flush()
        # Wake the timer only when its sleep is now too long (not on every read): a later
        # or vanished deadline just makes it wake once for nothing and sleep again.
        deadline = pipeline.next_deadline()
        if deadline is not None and deadline < self._armed:
            self._changed.set()
        await self._write(source, records)

    async def _write(self, source: Source | None, records: list[Record]) -> None:
        """Hand ``records`` to the output, after any earlier ones still waiting.

        Records join the backlog before the first checkpoint, so a feed
        cancelled while the output applies backpressure loses nothing: the
        next write (at the latest ``close_all`` at exit) sends them first.
        """
        if records:
            if self._decorate is not None and source is not None:
                self._decorate(records, source)
            self._backlog.extend(records)
        if not self._backlog:
            return
        async with self._write_lock:
            while self._backlog:
                batch = list(self._backlog)
                self._backlog.clear()
                await self.output.write(batch)

    # -- timer ---------------------------------------------------------------

    def next_deadline(self) -> float:
        deadlines = [d for s in self.sources if (d := s.pipeline.next_deadline()) is not None]
        return min(deadlines, default=math.inf)

    async def run_timer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll pipelines when their multiline flush timeout passes; runs until cancelled."""
        task_status.started()
        while True:
            self._changed = trio.Event()
            self._armed = self.next_deadline()
            with trio.move_on_at(self._armed):
                await self._changed.wait()
                continue  # a feed may have moved the deadline: re-arm
            now = trio.current_time()
            for source in list(self.sources):
                if (d := source.pipeline.next_deadline()) is not None and d <= now:
                    await self._write(source, source.pipeline.poll(now))
            if self.next_deadline() <= now:
                # A pipeline that keeps a past deadline would make this loop spin.
                await trio.sleep(0.01)

    # -- counts --------------------------------------------------------------

    def totals(self) -> PipelineTotals:
        out = PipelineTotals(
            self._retired.lines_in,
            self._retired.records_out,
            self._retired.multiline_joins,
            dict(self._retired.by_format),
            dict(self._retired.parse_failures),
        )
        for source in self.sources:
            out.add(source.pipeline.stats, self._fmt)
        return out

    def lines_by_stream(self) -> dict[str, int]:
        out = dict(self._retired_lines)
        for source in self.sources:
            out[source.stream] = out.get(source.stream, 0) + source.lines
        return out

    def truncated_lines(self) -> int:
        return self._retired_truncated + sum(s.splitter.truncated_lines for s in self.sources)
