"""The HTTP listener's access log: one JSON line per request, cheaply.

The line is the one ``log_event(access_log, "request", **fields)`` writes
(same head: time, level, logger, message; same fields), but built straight
from the request's values with orjson and written to the JSON log handler's
stream: no field dict walked for types, no handler chain resolved twice.
Whenever anything else listens on the way (pytest's caplog, a filter, a
second handler, a non-ASCII value) the line goes through ``log_event``, so
what any handler sees is exactly what it saw before.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TextIO

import orjson
import trio

from sidecar_common.jsonlog import JsonFormatter, get_logger, log_event, rfc3339

__all__ = ["AccessLog", "access_log"]

access_log = get_logger("ambassador.access")


class AccessLog:
    """Writes the ``request`` lines of ``logger``, one write per scheduler batch.

    Lines for the JSON handler are queued and written together by a trio
    system task that runs once the tasks runnable now have run: under load
    one ``write`` carries the lines of every request that ended in the batch;
    when idle a line goes out at once (the next batch). Envoy buffers its
    access log for up to a second; this holds a line for microseconds.
    ``flush()`` writes what is queued (the proxy calls it on close; the task
    flushes when the run ends).
    """

    def __init__(self, logger: logging.Logger = access_log) -> None:
        self.logger = logger
        self._lines: list[bytes] = []
        self._target: tuple[logging.Handler, TextIO] | None = None
        self._wake: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        #: The line's head after the time, for the logger's name (formatted once).
        self._named: str | None = None
        self._rest = b""

    def _stream(self) -> tuple[logging.Handler, TextIO] | None:
        """The JSON handler's stream when it is the only thing this line reaches, else None."""
        logger: logging.Logger | None = self.logger
        if not self.logger.isEnabledFor(logging.INFO) or self.logger.disabled:
            return None
        found: logging.Handler | None = None
        while logger is not None:
            if logger.filters:
                return None
            for handler in logger.handlers:
                if handler.level > logging.INFO:
                    continue
                if found is not None or type(handler.formatter) is not JsonFormatter:
                    return None
                if handler.filters or not isinstance(handler, logging.StreamHandler):
                    return None
                found = handler
            if not logger.propagate:
                break
            logger = logger.parent
        if found is None:
            return None
        stream = getattr(found, "stream", None)
        return None if stream is None else (found, stream)

    def request(self, **fields: Any) -> None:
        """One request's line (values: str, int, finite float; as ``log_event`` takes them)."""
        # Where lines go is resolved at the first line of a batch; the lines
        # queued with it (same scheduler batch) go the same way.
        target = self._target if self._lines else self._stream()
        if target is not None:
            # The head is formatted here and the fields serialised on their own:
            # no second dict per line.
            body = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
            if self._named is not self.logger.name:
                self._named = self.logger.name
                self._rest = b'","level":"info","logger":%s,"message":"request"' % orjson.dumps(
                    self._named
                )
            line = b'{"time":"%s%s%s' % (
                rfc3339(time.time()).encode(),
                self._rest,
                b"," + body[1:] if fields else b"}\n",
            )
            if line.isascii():
                if target != self._target:
                    self.flush()
                    self._target = target
                self._lines.append(line)
                if len(self._lines) == 1:
                    self._schedule()
                return
        self.flush()  # keep the order of lines
        log_event(self.logger, "request", **fields)

    def _schedule(self) -> None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:  # not in a trio run: nothing would flush later
            self.flush()
            return
        if token is not self._token or self._wake is None:
            self._token = token
            self._wake = trio.Event()
            trio.lowlevel.spawn_system_task(self._flusher, self._wake, name="access log flusher")
        self._wake.set()

    async def _flusher(self, wake: trio.Event) -> None:
        """Write the queued lines after each batch that queued some (a system task)."""
        try:
            while True:
                await wake.wait()
                if wake is not self._wake:
                    return  # replaced (a new run)
                wake = self._wake = trio.Event()
                self.flush()
        finally:
            self.flush()

    def close(self) -> None:
        """Write the queued lines and stop the flusher task (the proxy is closed)."""
        self.flush()
        wake, self._wake, self._token = self._wake, None, None
        if wake is not None:
            wake.set()  # the task sees it was replaced and returns

    def flush(self) -> None:
        """Write the queued lines now."""
        lines, target = self._lines, self._target
        if not lines or target is None:
            return
        self._lines = []
        handler, stream = target
        handler.acquire()
        try:
            stream.write(b"".join(lines).decode())
            stream.flush()
        except Exception:  # as logging.Handler.emit: a log line never raises
            handler.handleError(
                self.logger.makeRecord(self.logger.name, logging.INFO, "", 0, "request", (), None)
            )
        finally:
            handler.release()
