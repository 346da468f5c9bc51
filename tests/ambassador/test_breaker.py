"""Circuit breaker: pure admission decisions, then the documented trio usage on virtual time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ambassador.breaker import Breaker, Waiter
from sidecar_common.errors import ConfigError


def test_unlimited_admits_everyone() -> None:
    breaker = Breaker(None)
    assert all(breaker.try_acquire() for _ in range(1000))
    assert breaker.active == 1000
    for _ in range(1000):
        breaker.release()
    assert breaker.active == 0


def test_limit_without_queue_rejects_at_once() -> None:
    breaker = Breaker(2, max_pending=0)
    assert [breaker.try_acquire() for _ in range(3)] == [True, True, False]
    assert breaker.try_acquire() is False  # a failed try counts nothing...
    assert breaker.rejections_total == 0
    assert breaker.enqueue(lambda: None) is None  # ...the refusal does
    assert (breaker.rejected_overflow, breaker.rejected_timeout) == (1, 0)
    breaker.release()
    assert breaker.try_acquire() is True


def test_freed_slots_go_to_the_oldest_waiter() -> None:
    breaker = Breaker(1, max_pending=2)
    woken: list[str] = []
    assert breaker.try_acquire()
    first = breaker.enqueue(lambda: woken.append("first"))
    second = breaker.enqueue(lambda: woken.append("second"))
    assert first is not None and second is not None
    assert breaker.enqueue(lambda: woken.append("third")) is None  # queue full
    assert breaker.pending == 2
    breaker.release()
    assert woken == ["first"] and first.granted and not second.granted
    assert breaker.active == 1 and breaker.pending == 1
    # no barging: a newcomer may not take the slot from the queue
    assert breaker.try_acquire() is False
    breaker.release()
    assert woken == ["first", "second"] and second.granted
    breaker.release()
    assert breaker.active == 0 and breaker.pending == 0


def test_abandoned_waiter_counts_as_timeout() -> None:
    breaker = Breaker(1, max_pending=1)
    assert breaker.try_acquire()
    waiter = breaker.enqueue(lambda: None)
    assert waiter is not None
    breaker.abandon(waiter)
    breaker.abandon(waiter)  # idempotent
    assert breaker.rejected_timeout == 1 and breaker.pending == 0
    breaker.release()
    assert breaker.active == 0


def test_abandoning_a_granted_waiter_releases_its_slot() -> None:
    breaker = Breaker(1, max_pending=1)
    assert breaker.try_acquire()
    waiter = breaker.enqueue(lambda: None)
    assert waiter is not None
    breaker.release()  # handed to the waiter...
    assert waiter.granted and breaker.active == 1
    breaker.abandon(waiter)  # ...which gave up at the same moment
    assert breaker.active == 0 and breaker.rejections_total == 0


def test_enqueue_when_a_slot_is_free_grants_at_once() -> None:
    breaker = Breaker(1, max_pending=0)
    woken = []
    waiter = breaker.enqueue(lambda: woken.append(1))
    assert waiter is not None and waiter.granted and woken == [1]
    assert breaker.active == 1


def test_reconfigure_grants_waiters_when_the_limit_rises() -> None:
    breaker = Breaker(1, max_pending=3)
    woken: list[int] = []
    assert breaker.try_acquire()

    def waker(i: int) -> Callable[[], None]:
        return lambda: woken.append(i)

    waiters = [breaker.enqueue(waker(i)) for i in range(3)]
    breaker.reconfigure(3, 3, 1.0)
    assert woken == [0, 1] and breaker.active == 3 and breaker.pending == 1
    assert [w.granted for w in waiters if w is not None] == [True, True, False]
    # lowering the limit cuts nobody off; it applies as slots come back
    breaker.reconfigure(1, 0, 1.0)
    assert breaker.active == 3
    breaker.release()
    breaker.release()
    assert woken == [0, 1] and breaker.active == 1  # over the new limit: back to the pool
    breaker.release()
    assert woken == [0, 1, 2] and breaker.active == 1  # under it: the waiter gets the slot
    breaker.release()
    assert breaker.active == 0 and breaker.try_acquire() and not breaker.try_acquire()
    with pytest.raises(ConfigError):
        breaker.reconfigure(0, 0, 1.0)


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        Breaker(1).release()


@pytest.mark.parametrize(
    ("args", "setting"),
    [((0,), "max_connections"), ((1, -1), "max_pending"), ((1, 0, -1.0), "pending_timeout")],
)
def test_bad_settings(args: tuple[float, ...], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        Breaker(*args)  # type: ignore[arg-type]
    assert info.value.setting == setting


class BreakerMachine(RuleBasedStateMachine):
    """Any sequence of acquire/enqueue/release/abandon keeps the accounting straight."""

    def __init__(self) -> None:
        super().__init__()
        self.breaker = Breaker(3, max_pending=2)
        self.holders = 0  # callers holding a slot (admitted or granted)
        self.queued: list[Waiter] = []

    @rule()
    def acquire(self) -> None:
        if self.breaker.try_acquire():
            self.holders += 1
            return
        waiter = self.breaker.enqueue(lambda: None)
        if waiter is None:
            return
        if waiter.granted:
            self.holders += 1
        else:
            self.queued.append(waiter)

    def _collect_granted(self) -> None:
        for waiter in [w for w in self.queued if w.granted]:
            self.queued.remove(waiter)
            self.holders += 1

    @precondition(lambda self: self.holders > 0)
    @rule()
    def release(self) -> None:
        self.breaker.release()
        self.holders -= 1
        self._collect_granted()

    @precondition(lambda self: bool(self.queued))
    @rule(index=st.integers(0, 10))
    def abandon(self, index: int) -> None:
        waiter = self.queued.pop(index % len(self.queued))
        self.breaker.abandon(waiter)

    @invariant()
    def accounting(self) -> None:
        assert self.breaker.active == self.holders <= 3
        assert self.breaker.pending == len(self.queued) <= 2
        if self.queued:
            assert self.breaker.active == 3  # nobody waits while a slot is free


TestBreakerMachine = BreakerMachine.TestCase


async def admit(breaker: Breaker) -> bool:
    """The listener's pattern from docs/ambassador-design.md."""
    if breaker.try_acquire():
        return True
    event = trio.Event()
    waiter = breaker.enqueue(event.set)
    if waiter is None:
        return False
    waited = False
    try:
        with trio.move_on_after(breaker.pending_timeout):
            await event.wait()
        waited = True
    finally:
        if not (waited and waiter.granted):
            breaker.abandon(waiter)
    return waiter.granted


async def test_pending_queue_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    breaker = Breaker(1, max_pending=1, pending_timeout=2.0)
    outcomes: dict[str, tuple[bool, float]] = {}

    async def client(name: str, hold: float) -> None:
        ok = await admit(breaker)
        outcomes[name] = (ok, trio.current_time())
        if ok:
            await trio.sleep(hold)
            breaker.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client, "a", 1.5)  # admitted at 0, holds until 1.5
        await trio.sleep(0.1)
        nursery.start_soon(client, "b", 5.0)  # waits, granted at 1.5, holds until 6.5
        await trio.sleep(0.1)
        nursery.start_soon(client, "c", 0.0)  # queue full at 0.2: refused at once
        await trio.sleep(1.5)
        nursery.start_soon(client, "d", 0.0)  # waits from 1.7, times out at 3.7
    assert outcomes == {
        "a": (True, 0.0),
        "b": (True, pytest.approx(1.5)),
        "c": (False, pytest.approx(0.2)),
        "d": (False, pytest.approx(3.7)),
    }
    assert (breaker.rejected_overflow, breaker.rejected_timeout) == (1, 1)
    assert breaker.active == 0


async def test_a_waiter_cancelled_after_its_grant_gives_the_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = Breaker(1, max_pending=1, pending_timeout=10.0)
    assert breaker.try_acquire()
    with trio.CancelScope() as outer:

        async def cancel_when_granted() -> None:
            outer.cancel()  # the shutdown cancels the waiting task...
            breaker.release()  # ...and in the same tick the slot is handed to it

        async with trio.open_nursery() as nursery:
            nursery.start_soon(admit, breaker)
            await trio.sleep(1.0)
            assert breaker.pending == 1
            nursery.start_soon(cancel_when_granted)
    assert outer.cancelled_caught
    assert breaker.active == 0 and breaker.pending == 0
    assert breaker.rejections_total == 0
