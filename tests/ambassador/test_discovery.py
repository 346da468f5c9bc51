"""DNS discovery: the pure merge as tables, the refresh loop on virtual time, a real lookup."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ambassador.cluster import Cluster
from ambassador.discovery import DnsTable, is_literal, resolve_address, run_dns_discovery
from ambassador.endpoint import Address

SVC: Address = ("db.prod.svc", 5432)
CACHE: Address = ("cache.prod.svc", 6379)
STATIC: Address = ("10.1.1.1", 5432)


@pytest.mark.parametrize(
    ("host", "literal"),
    [("10.0.0.1", True), ("::1", True), ("fe80::1", True), ("db", False), ("db.svc", False)],
)
def test_is_literal(host: str, literal: bool) -> None:
    assert is_literal(host) is literal


def test_names_start_as_themselves_and_literals_are_never_resolved() -> None:
    table = DnsTable([SVC, STATIC, SVC])
    assert table.names == [SVC]
    assert table.addresses() == [SVC, STATIC]


@pytest.mark.parametrize(
    ("answers", "expected", "changes"),
    [
        # every address is an endpoint, sorted, without duplicates
        (
            [[("10.0.0.2", 5432), ("10.0.0.1", 5432), ("10.0.0.2", 5432)]],
            [("10.0.0.1", 5432), ("10.0.0.2", 5432)],
            [True],
        ),
        # a rotated answer is no change
        (
            [[("10.0.0.1", 5432), ("10.0.0.2", 5432)], [("10.0.0.2", 5432), ("10.0.0.1", 5432)]],
            [("10.0.0.1", 5432), ("10.0.0.2", 5432)],
            [True, False],
        ),
        # a failed lookup keeps the last good set, and so does an empty answer
        ([[("10.0.0.1", 5432)], None, []], [("10.0.0.1", 5432)], [True, False, False]),
        # a failure before any success keeps the name itself
        ([None], [SVC], [False]),
        # pods come and go
        (
            [[("10.0.0.1", 5432)], [("10.0.0.1", 5432), ("10.0.0.3", 5432)], [("10.0.0.3", 5432)]],
            [("10.0.0.3", 5432)],
            [True, True, True],
        ),
    ],
)
def test_merge(
    answers: list[list[Address] | None], expected: list[Address], changes: list[bool]
) -> None:
    table = DnsTable([SVC])
    assert [table.update(SVC, answer) for answer in answers] == changes
    assert table.addresses() == expected


def test_union_of_several_names_in_name_order() -> None:
    table = DnsTable([SVC, STATIC, CACHE])
    table.update(CACHE, [("10.0.0.9", 6379)])
    table.update(SVC, [("10.0.0.1", 5432), STATIC])
    assert table.addresses() == [("10.0.0.1", 5432), STATIC, ("10.0.0.9", 6379)]
    with pytest.raises(KeyError):
        table.update(("other", 1), [])


async def test_discovery_loop_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    """Answers at t=0, 5, 10, 15, 20: a change, a failure, a hang, a change back."""
    script: list[object] = [
        [("10.0.0.1", 5432), ("10.0.0.2", 5432)],
        OSError("temporary failure in name resolution"),
        "hang",
        [("10.0.0.2", 5432)],
        [("10.0.0.2", 5432)],
    ]
    calls: list[float] = []

    async def resolve(name: Address) -> list[Address]:
        assert name == SVC
        calls.append(trio.current_time())
        step = script.pop(0)
        if step == "hang":
            await trio.sleep_forever()
        if isinstance(step, OSError):
            raise step
        assert isinstance(step, list)
        return step

    cluster = Cluster("pg/prod")
    cluster.set_addresses([SVC, STATIC], 0.0)
    history: list[tuple[float, list[Address]]] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_dns_discovery(
                cluster,
                [SVC, STATIC],
                5.0,
                resolve=resolve,
                on_change=lambda addrs: history.append((trio.current_time(), addrs)),
            )
        )
        await trio.sleep(22.0)
        nursery.cancel_scope.cancel()
    # the hanging lookup at 10 is cut off by the interval (at 15), then the loop sleeps 5 more
    assert calls == [0.0, 5.0, 10.0, 20.0]
    assert history == [
        (0.0, [("10.0.0.1", 5432), ("10.0.0.2", 5432), STATIC]),
        (20.0, [("10.0.0.2", 5432), STATIC]),
    ]
    assert [ep.address for ep in cluster.endpoints] == [("10.0.0.2", 5432), STATIC]


async def test_only_literals_means_nothing_to_do(autojump_clock: trio.testing.MockClock) -> None:
    async def resolve(name: Address) -> list[Address]:  # pragma: no cover - must not run
        raise AssertionError(name)

    cluster = Cluster("pg/dev")
    cluster.set_addresses([STATIC], 0.0)
    with trio.move_on_after(60):
        await run_dns_discovery(cluster, [STATIC], 1.0, resolve=resolve)
    assert [ep.address for ep in cluster.endpoints] == [STATIC]


async def test_resolve_address_for_real() -> None:
    answer = await resolve_address(("localhost", 5432))
    assert ("127.0.0.1", 5432) in answer
    assert answer == sorted(set(answer))
    # (no lookup of a missing name here: it would ask a DNS server off this machine)


async def test_discovery_keeps_state_of_addresses_that_stay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers = [[("10.0.0.1", 80), ("10.0.0.2", 80)], [("10.0.0.2", 80), ("10.0.0.3", 80)]]

    async def resolve(name: Address) -> list[Address]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    cluster = Cluster("api/prod")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_dns_discovery(cluster, [("api", 80)], 1.0, resolve=resolve))
        await trio.sleep(0.5)
        kept = cluster.endpoint(("10.0.0.2", 80))
        assert kept is not None
        kept.active = 7
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert cluster.endpoint(("10.0.0.2", 80)) is kept and kept.active == 7
    assert [ep.address for ep in cluster.endpoints] == [("10.0.0.2", 80), ("10.0.0.3", 80)]
