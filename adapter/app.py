"""``adapter run``: wire settings, pipeline, inputs, output and admin together.

One trio run, one nursery: the output's background task, the dispatcher's
multiline timer, the admin server, and the input of the chosen mode (stdin,
wrap, or tail). Shutdown is the same for every mode, in this order: stop the
input (EOF, the app's exit, or a signal), flush every source's pending
records, let the output deliver (or persist) what it holds by the drain
deadline, then cancel the background tasks.

Signals: in wrap mode SIGTERM, SIGINT and SIGHUP go to the app, and we end
when it does. Otherwise the first SIGTERM or SIGINT stops the input and starts
the shutdown above (exit status 0); a second one exits at once (128+N), with
the forward output's queue still written to the buffer directory; SIGHUP is
ignored.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from sidecar_common.errors import ConfigError, SidecarError
from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.metrics import Registry

from .config import AdapterSettings, parse_fields
from .inputs import Dispatcher, PipelineLike
from .inputs.stdin import run_stdin
from .inputs.tail import Tailer
from .inputs.wrap import run_wrapped
from .outputs import Output, Record
from .outputs.stdout import StdoutOutput

__all__ = ["build_pipeline", "make_output", "register_metrics", "run", "serve"]

log = get_logger("adapter")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Allocations between two young-generation collections (CPython's default is 700).
GC_THRESHOLD = 20_000

Samples = Iterable[tuple[dict[str, str], float]]


def build_pipeline(
    settings: AdapterSettings,
) -> tuple[Callable[[], PipelineLike], Callable[[Record], bytes]]:
    """A factory of pipelines configured by ``settings``, and the JSON encoder.

    One pipeline is built here at once, so a setting the pipeline rejects is
    a ``ConfigError`` before anything starts.
    """
    from .pipeline import Pipeline, PipelineConfig, encode_json

    config = PipelineConfig(
        format=settings.format,
        custom_patterns=list(settings.pattern),
        schema=settings.schema,
        timezone=settings.timezone,
        keep_original=settings.keep_original,
        multiline=settings.multiline,
        continuation=settings.continuation,
        flush_timeout=settings.flush_timeout,
        static_fields=parse_fields(settings.field),
        redact_defaults=settings.redact_defaults,
        redact_patterns=list(settings.redact),
    )
    try:
        Pipeline(config)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(
            "--format", settings.format, f"a valid pipeline setting ({exc})"
        ) from None

    def make() -> PipelineLike:
        return Pipeline(config)

    return make, encode_json


def make_output(settings: AdapterSettings, encode: Callable[[Record], bytes]) -> Output:
    if settings.output == "stdout":
        return StdoutOutput(encode)
    # Imported here: a stdout adapter does not pay for loading what it does not use.
    from sidecar_common.retry import Backoff

    from .buffer import ChunkQueue
    from .outputs.forward import ForwardOutput, connect_tcp, connect_unix

    queue = ChunkQueue(
        memory_max_bytes=settings.buffer_memory_bytes,
        disk_max_bytes=settings.buffer_max_bytes,
        directory=settings.buffer_dir,
        drop_policy=settings.drop_policy,
    )
    if settings.forward_socket is not None:
        connect = connect_unix(settings.forward_socket)
        endpoint = f"unix:{settings.forward_socket}"
    else:
        connect = connect_tcp(settings.forward_host, settings.forward_port)
        endpoint = f"{settings.forward_host}:{settings.forward_port}"
    output = ForwardOutput(
        connect,
        queue,
        tag=settings.forward_tag,
        chunk_records=settings.forward_chunk_records,
        ack_timeout=settings.forward_ack_timeout,
        backoff=Backoff(0.1, settings.forward_retry_max, 2.0),
        endpoint=endpoint,
    )
    try:
        output.load()
    except OSError as exc:
        raise ConfigError(
            "--buffer-dir", str(settings.buffer_dir), f"a writable directory ({exc.strerror})"
        ) from None
    return output


def register_metrics(registry: Registry, dispatcher: Dispatcher, output: Output) -> None:
    """The metrics of docs/adapter-design.md, computed from plain counters at scrape time."""
    name = output.name

    def by_label(label: str, counts: dict[str, int]) -> Samples:
        return [({label: key}, float(n)) for key, n in sorted(counts.items())]

    registry.counter_callback(
        "adapter_lines_total",
        "Lines (pieces of over-long lines count each) read, by stream.",
        lambda: by_label("stream", dispatcher.lines_by_stream()),
    )
    registry.counter_callback(
        "adapter_records_total",
        "Records produced, by detected format.",
        lambda: by_label("format", dispatcher.totals().by_format),
    )
    registry.counter_callback(
        "adapter_parse_failures_total",
        "Lines the selected format could not parse (kept as plain messages).",
        lambda: by_label("format", dispatcher.totals().parse_failures),
    )
    registry.counter_callback(
        "adapter_multiline_joins_total",
        "Lines joined into a preceding multiline record.",
        lambda: [({}, float(dispatcher.totals().multiline_joins))],
    )
    registry.counter_callback(
        "adapter_truncated_lines_total",
        "Lines longer than --max-line-bytes, split into pieces marked truncated.",
        lambda: [({}, float(dispatcher.truncated_lines()))],
    )
    registry.gauge_callback(
        "adapter_output_queue_records",
        "Records taken by the output and not yet delivered.",
        lambda: [({"output": name}, float(output.stats.queued))],
    )
    registry.gauge_callback(
        "adapter_buffered_records",
        "Records waiting for the collector, in memory or on disk.",
        lambda: [
            ({"output": name, "where": "memory"}, float(output.stats.buffered_memory)),
            ({"output": name, "where": "disk"}, float(output.stats.buffered_disk)),
        ],
    )
    registry.counter_callback(
        "adapter_retried_records_total",
        "Records sent again because their chunk was not acknowledged.",
        lambda: [({"output": name}, float(output.stats.retried))],
    )
    registry.counter_callback(
        "adapter_dropped_records_total",
        "Records dropped under the drop policy (or at exit without a buffer directory).",
        lambda: [
            ({"output": name, "reason": reason}, float(n))
            for reason, n in sorted(output.stats.dropped.items())
        ],
    )
    registry.counter_callback(
        "adapter_delivered_records_total",
        "Records written (stdout) or acknowledged by the collector (forward).",
        lambda: [({"output": name}, float(output.stats.delivered))],
    )


@dataclass
class _State:
    status: int = 0
    stopping: bool = False
    started: bool = False

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        if not self.started:
            return False, "starting"
        return True, "ok"


async def _stop_on_signal(
    signals: AsyncIterator[int],
    input_scope: trio.CancelScope,
    everything: trio.CancelScope,
    state: _State,
) -> None:
    seen = 0
    async for signum in signals:
        if signum == signal.SIGHUP:
            log_event(log, "SIGHUP ignored", signal=signum)
            continue
        seen += 1
        if seen == 1:
            # Also when the input already ended (EOF racing the signal): the
            # shutdown under way is the one asked for.
            state.stopping = True
            log_event(log, "signal received; flushing and stopping", signal=signum)
            input_scope.cancel()
            continue
        log_event(log, "second signal; exiting now", level=logging.WARNING, signal=signum)
        state.status = 128 + signum
        everything.cancel()
        return


async def serve(settings: AdapterSettings, command: list[str]) -> int:
    """Run the adapter until its input ends; returns the exit status."""
    make_pipeline, encode = build_pipeline(settings)
    output = make_output(settings, encode)
    dispatcher = Dispatcher(
        make_pipeline,
        output,
        max_line_bytes=settings.max_line_bytes,
        fmt=settings.format,
    )
    registry = Registry()
    register_metrics(registry, dispatcher, output)
    state = _State()
    mode = "wrap" if command else "tail" if settings.tail else "stdin"
    tailer: Tailer | None = None
    with trio.open_signal_receiver(*SIGNALS) as signals:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(output.run)
                await nursery.start(dispatcher.run_timer)
                if settings.admin is not None:
                    from sidecar_common.admin import AdminApp, AdminError, serve_admin

                    admin = AdminApp(registry, ready=state.ready)
                    try:
                        port = await nursery.start(
                            serve_admin, admin, settings.admin.host, settings.admin.port
                        )
                    except AdminError as exc:
                        # A port in use is the operator's to fix: one line, exit 2
                        # (as the ambassador and the watcher say it).
                        raise ConfigError(
                            "--admin",
                            f"{settings.admin.host}:{settings.admin.port}",
                            f"an address we can listen on; {exc}",
                        ) from None
                    log_event(log, "admin server listening", host=settings.admin.host, port=port)
                state.started = True
                log_event(log, "adapter started", mode=mode, output=output.name)
                if command:
                    state.status = await run_wrapped(command, dispatcher, signals)
                else:
                    with trio.CancelScope() as input_scope:
                        nursery.start_soon(
                            _stop_on_signal, signals, input_scope, nursery.cancel_scope, state
                        )
                        if settings.tail:
                            tailer = Tailer(
                                settings.tail,
                                dispatcher,
                                checkpoint=settings.checkpoint,
                                interval=settings.tail_interval,
                            )
                            await tailer.run()
                        else:
                            await run_stdin(dispatcher)
                state.stopping = True
                log_event(log, "input ended; flushing", mode=mode)
                deadline = trio.current_time() + settings.drain_timeout
                with trio.move_on_at(deadline):
                    if tailer is not None:
                        await tailer.finish()
                    await dispatcher.close_all()
                # However long the flush took, the output gets a moment to write it out.
                await output.drain(max(deadline, trio.current_time() + 1.0))
                nursery.cancel_scope.cancel()
        finally:
            persist = getattr(output, "persist", None)  # the forward output's buffer
            if persist is not None:
                persist()
    _log_summary(dispatcher, output, state.status)
    return state.status


def _log_summary(dispatcher: Dispatcher, output: Output, status: int) -> None:
    totals = dispatcher.totals()
    stats = output.stats
    fields: dict[str, Any] = {
        "lines": sum(dispatcher.lines_by_stream().values()),
        "records": totals.records_out,
        "delivered": stats.delivered,
        "retried": stats.retried,
        "buffered_memory": stats.buffered_memory,
        "buffered_disk": stats.buffered_disk,
        "dropped": sum(stats.dropped.values()),
        "exit_status": status,
    }
    level = logging.WARNING if fields["dropped"] else logging.INFO
    log_event(log, "adapter stopped", level=level, **fields)


def run(settings: AdapterSettings, command: list[str]) -> int:
    """Synchronous entry point for the CLI: the exit status.

    A ``SidecarError`` while running (stdout closed by the reader) is one log
    line and status 1, not a traceback; a ``ConfigError`` found only once
    serving starts (the admin address taken) is raised alone, out of any
    exception group, for the caller's one-line exit 2.
    """
    tune_gc()
    try:
        result: int = trio.run(serve, settings, command)
    except (SidecarError, BaseExceptionGroup) as exc:
        config_error = _config_error(exc)
        if config_error is not None:
            raise config_error from None
        errors = _sidecar_errors(exc)
        if errors is None:
            raise
        for error in errors:
            log_event(log, "adapter failed", level=logging.ERROR, error=str(error))
        return 1
    return result


def tune_gc() -> None:
    """Fewer garbage-collector passes: most of what a line allocates is gone when it is written.

    Records are trees of dicts freed by reference counting once written, so the cyclic
    collector finds nothing in them; with the default threshold (700 allocations) it
    still ran every few lines, each time walking the records not yet written. The
    objects of the start-up (modules, classes) are frozen: never walked again.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def _config_error(exc: BaseException) -> ConfigError | None:
    """The first ``ConfigError`` in ``exc`` or its exception groups, if any."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _config_error(sub)
            if found is not None:
                return found
    return None


def _sidecar_errors(exc: BaseException) -> list[BaseException] | None:
    """The leaves of ``exc`` if every one is a SidecarError (but not a ConfigError)."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for sub in exc.exceptions:
            found = _sidecar_errors(sub)
            if found is None:
                return None
            leaves += found
        return leaves
    if isinstance(exc, SidecarError) and not isinstance(exc, ConfigError):
        return [exc]
    return None
