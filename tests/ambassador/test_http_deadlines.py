"""The HTTP listener's watchdog: the pure scan as a table, the task on virtual time."""

from __future__ import annotations

import math

import trio

from ambassador.http.deadlines import Deadlines, scan


class Item:
    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        self.expired_at: float | None = None

    def expire(self) -> None:
        self.expired_at = trio.current_time()


def test_scan_splits_due_from_pending() -> None:
    a, b, c = Item(1.0), Item(2.0), Item(3.0)
    due, earliest = scan([a, b, c], 2.0)
    assert due == [a, b] and earliest == 3.0
    assert scan([], 5.0) == ([], math.inf)
    assert scan([c], 0.0) == ([], 3.0)


async def test_items_expire_exactly_at_their_deadline(autojump_clock: trio.abc.Clock) -> None:
    d = Deadlines()
    start = trio.current_time()
    late, early, gone = Item(), Item(), Item()
    d.add(late, start + 10.0)
    await trio.sleep(1.0)
    d.add(gone, start + 2.0)  # earlier than the task's target: it rescans
    d.add(early, start + 3.0)
    await trio.sleep(0.5)
    d.discard(gone)  # finished in time: never expires
    await trio.sleep(20.0)
    assert early.expired_at == start + 3.0
    assert late.expired_at == start + 10.0
    assert gone.expired_at is None
    assert d.items == set()


async def test_a_failing_expiry_does_not_stop_the_others(autojump_clock: trio.abc.Clock) -> None:
    class Broken(Item):
        def expire(self) -> None:
            raise OSError("closed already")

    d = Deadlines()
    ok = Item()
    d.add(Broken(), trio.current_time() + 1.0)
    d.add(ok, trio.current_time() + 2.0)
    await trio.sleep(3.0)
    assert ok.expired_at is not None


async def test_close_stops_the_task(autojump_clock: trio.abc.Clock) -> None:
    baseline = trio.lowlevel.current_statistics().tasks_living
    d = Deadlines()
    item = Item()
    d.add(item, trio.current_time() + 5.0)
    await trio.sleep(1.0)
    assert trio.lowlevel.current_statistics().tasks_living == baseline + 1
    d.close()
    await trio.sleep(10.0)
    assert item.expired_at is None
    assert trio.lowlevel.current_statistics().tasks_living == baseline
