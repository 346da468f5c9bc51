"""Circuit breaker: admission control for a listener or an endpoint.

Envoy-style resource limits rather than a failure-rate breaker: at most
``max_connections`` admitted at once, and at most ``max_pending`` callers
waiting for a slot, each for at most ``pending_timeout`` seconds. Over the
limit a caller is refused at once, so a flood of clients costs a counter and a
closed socket, never an unbounded queue.

Pure: no awaiting here. The shell waits on its own event and tells the breaker
what happened; slots freed by ``release`` go straight to the oldest waiter
(FIFO, no barging), whose ``wake`` callback is called so the shell can set its
``trio.Event``::

    if not breaker.try_acquire():
        event = trio.Event()
        waiter = breaker.enqueue(event.set)
        if waiter is None:
            ...  # rejected: queue full (counted)
        waited = False
        try:
            with trio.move_on_after(breaker.pending_timeout):
                await event.wait()
            waited = True
        finally:
            # Timed out (counted as a pending timeout), or cancelled from outside:
            # a slot granted in the meantime must go back, or it leaks.
            if not (waited and waiter.granted):
                breaker.abandon(waiter)
        if not waiter.granted:
            ...  # rejected: pending timeout
    try:
        ...  # serve
    finally:
        breaker.release()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from sidecar_common.errors import ConfigError


class Waiter:
    """A caller queued for a slot; ``granted`` turns True when it got one."""

    __slots__ = ("_wake", "done", "granted")

    def __init__(self, wake: Callable[[], object]) -> None:
        self._wake = wake
        self.granted = False
        #: True once granted or abandoned (an abandoned waiter is never granted).
        self.done = False


class Breaker:
    """Counts admitted callers against ``max_connections`` (``None``: unlimited)."""

    __slots__ = (
        "_queue",
        "active",
        "max_connections",
        "max_pending",
        "pending_timeout",
        "rejected_overflow",
        "rejected_timeout",
    )

    def __init__(
        self, max_connections: int | None, max_pending: int = 0, pending_timeout: float = 1.0
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ConfigError("max_connections", max_connections, "an integer >= 1")
        if max_pending < 0:
            raise ConfigError("max_pending", max_pending, "an integer >= 0")
        if pending_timeout < 0:
            raise ConfigError("pending_timeout", pending_timeout, "a duration >= 0")
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.pending_timeout = pending_timeout
        self.active = 0
        self._queue: deque[Waiter] = deque()
        #: Refused at once: at the limit with the pending queue full.
        self.rejected_overflow = 0
        #: Waited in the queue for ``pending_timeout`` (or was cancelled) without a slot.
        self.rejected_timeout = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def rejections_total(self) -> int:
        return self.rejected_overflow + self.rejected_timeout

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (never counts a rejection)."""
        if self.max_connections is None or (self.active < self.max_connections and not self._queue):
            self.active += 1
            return True
        return False

    def enqueue(self, wake: Callable[[], object]) -> Waiter | None:
        """Queue for a slot; ``None`` (and one rejection counted) if the queue is full.

        Call after a failed ``try_acquire``. If a slot is free by now (nothing
        queued), the waiter is granted at once and ``wake`` is called.
        """
        if self.max_connections is None or (self.active < self.max_connections and not self._queue):
            self.active += 1
            waiter = Waiter(wake)
            waiter.granted = waiter.done = True
            wake()
            return waiter
        if len(self._queue) >= self.max_pending:
            self.rejected_overflow += 1
            return None
        waiter = Waiter(wake)
        self._queue.append(waiter)
        return waiter

    def reconfigure(
        self, max_connections: int | None, max_pending: int, pending_timeout: float
    ) -> None:
        """Apply new limits (a config reload); slots that a raise frees go to waiters at once.

        A lower limit takes effect as connections end (nobody is cut off); a
        smaller queue keeps the waiters it already has.
        """
        fresh = Breaker(max_connections, max_pending, pending_timeout)  # validates
        self.max_connections = fresh.max_connections
        self.max_pending = fresh.max_pending
        self.pending_timeout = fresh.pending_timeout
        while self._queue and (self.max_connections is None or self.active < self.max_connections):
            waiter = self._queue.popleft()
            waiter.granted = waiter.done = True
            self.active += 1
            waiter._wake()

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the pool.

        After a lowered limit (``reconfigure``), slots over the new limit go back
        to the pool instead, until the count is under it.
        """
        if self.active <= 0:
            raise RuntimeError("Breaker.release() without a matching acquire")
        if self._queue and (self.max_connections is None or self.active <= self.max_connections):
            waiter = self._queue.popleft()
            waiter.granted = waiter.done = True
            waiter._wake()
            return
        self.active -= 1

    def abandon(self, waiter: Waiter) -> None:
        """A waiter gives up (timeout or cancellation).

        Not granted: it leaves the queue and counts as a pending timeout.
        Granted meanwhile (the race the shell cannot avoid): the slot is released.
        """
        if waiter.granted:
            waiter.granted = False
            self.release()
            return
        if waiter.done:
            return
        waiter.done = True
        self._queue.remove(waiter)
        self.rejected_timeout += 1
