"""Pool bookkeeping: LIFO reuse, the idle bound, idle expiry, counts. Pure."""

from __future__ import annotations

from ambassador.http.pool import PoolBook


def book(max_idle: int = 2, idle_timeout: float = 10.0) -> PoolBook[str, str]:
    return PoolBook(max_idle=max_idle, idle_timeout=idle_timeout)


def counts(b: PoolBook[str, str]) -> dict[str, tuple[int, int]]:
    return {k: (a, i) for k, a, i in b.counts()}


def test_new_then_reuse_lifo() -> None:
    b = book()
    assert b.checkout("ep", 0.0) == (None, [])
    b.opened("ep")
    b.opened("ep")
    assert counts(b) == {"ep": (2, 0)}
    assert b.checkin("ep", "c1", 1.0) == []
    assert b.checkin("ep", "c2", 2.0) == []
    assert counts(b) == {"ep": (0, 2)}
    assert b.checkout("ep", 3.0) == ("c2", [])  # most recently used first
    assert counts(b) == {"ep": (1, 1)}


def test_idle_bound_closes_the_oldest() -> None:
    b = book(max_idle=2)
    for _ in range(3):
        b.opened("ep")
    assert b.checkin("ep", "c1", 1.0) == []
    assert b.checkin("ep", "c2", 2.0) == []
    assert b.checkin("ep", "c3", 3.0) == ["c1"]
    assert counts(b) == {"ep": (0, 2)}


def test_zero_idle_means_no_keepalive() -> None:
    b = book(max_idle=0)
    b.opened("ep")
    assert b.checkin("ep", "c1", 0.0) == ["c1"]


def test_expiry() -> None:
    b = book(idle_timeout=5.0)
    b.opened("ep")
    b.opened("ep")
    b.checkin("ep", "old", 0.0)
    b.checkin("ep", "new", 4.0)
    conn, expired = b.checkout("ep", 6.0)
    assert (conn, expired) == ("new", ["old"])
    b.checkin("ep", "new", 6.0)
    assert b.expire(20.0) == ["new"]
    assert counts(b) == {}


def test_keys_are_separate_and_discard_counts_down() -> None:
    b = book()
    b.opened("a")
    b.opened("b")
    b.discard("a")
    assert counts(b) == {"b": (1, 0)}
    b.checkin("b", "cb", 0.0)
    assert b.checkout("a", 1.0) == (None, [])
    assert sorted(b.drain()) == ["cb"]
    assert counts(b) == {"a": (0, 0), "b": (0, 0)}
