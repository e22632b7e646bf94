"""Decaying tags (checklist items 20, 27, 28), driven tick by tick with a FakeClock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from asyncconnmgr import (
    ConnManager,
    DecayingTag,
    DecayingValue,
    ManagerClosedError,
    bump_overwrite,
    bump_sum_bounded,
    bump_sum_unbounded,
    decay_expire_when_inactive,
    decay_fixed,
    decay_linear,
    decay_none,
)
from asyncconnmgr.testing import FakeClock, settle

from .util import applied, open_conns

pytestmark = pytest.mark.anyio

RESOLUTION = 1.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cm(clock: FakeClock) -> AsyncIterator[ConnManager]:
    async with ConnManager(
        low_water=0, high_water=100, grace_period=0, decay_resolution=RESOLUTION, clock=clock
    ) as manager:
        open_conns(manager, ["p", "q"])
        await applied(manager)
        yield manager


def value_of(cm: ConnManager, peer: str, tag: str | None = None) -> int | None:
    info = cm.get_tag_info(peer)
    if info is None:
        return None
    return info.value if tag is None else info.tags.get(tag)


async def tick(clock: FakeClock, times: int = 1) -> None:
    for _ in range(times):
        clock.advance(RESOLUTION)
        await settle()


async def test_bump_is_applied_at_once(cm: ConnManager) -> None:  # item 20
    tag = cm.register_decaying_tag("gossip", 1, decay_none(), bump_sum_unbounded())
    tag.bump("p", 10)
    assert value_of(cm, "p", "gossip") == 10
    assert value_of(cm, "p") == 10


async def test_bounded_sum_clamps(cm: ConnManager) -> None:  # item 20
    tag = cm.register_decaying_tag("bounded", 1, decay_none(), bump_sum_bounded(10, 20))
    tag.bump("p", 5)
    assert value_of(cm, "p") == 10
    tag.bump("p", 100)
    assert value_of(cm, "p") == 20


async def test_three_tags_without_decay_sum(cm: ConnManager, clock: FakeClock) -> None:  # 20
    for name in ("a", "b", "c"):
        cm.register_decaying_tag(name, 1, decay_none(), bump_sum_unbounded()).bump("p", 100)
    await tick(clock, 3)
    assert value_of(cm, "p") == 300
    info = cm.get_tag_info("p")
    assert info is not None
    assert dict(info.tags) == {"a": 100, "b": 100, "c": 100}


async def test_fixed_decay_on_three_intervals(cm: ConnManager, clock: FakeClock) -> None:  # 20
    every1 = cm.register_decaying_tag("every1", 1, decay_fixed(10), bump_sum_unbounded())
    every2 = cm.register_decaying_tag("every2", 2, decay_fixed(20), bump_sum_unbounded())
    every3 = cm.register_decaying_tag("every3", 3, decay_fixed(1), bump_sum_unbounded())
    for tag in (every1, every2, every3):
        tag.bump("p", 1000)
    expected = {
        1: (990, 1000, 1000),
        2: (980, 980, 1000),
        3: (970, 980, 999),
        4: (960, 960, 999),
        5: (950, 960, 999),
        6: (940, 940, 998),
    }
    for second in range(1, 7):
        await tick(clock)
        got = tuple(value_of(cm, "p", name) for name in ("every1", "every2", "every3"))
        assert got == expected[second], second
    assert value_of(cm, "p") == 940 + 940 + 998


async def test_fixed_decay_removes_at_zero(cm: ConnManager, clock: FakeClock) -> None:  # 20
    tag = cm.register_decaying_tag("short", 1, decay_fixed(10), bump_sum_unbounded())
    tag.bump("p", 15)
    await tick(clock)
    assert value_of(cm, "p", "short") == 5
    await tick(clock)
    assert value_of(cm, "p", "short") is None
    assert value_of(cm, "p") == 0


async def test_linear_decay_and_overwrite(cm: ConnManager, clock: FakeClock) -> None:  # 20
    tag = cm.register_decaying_tag("halves", 1, decay_linear(0.5), bump_overwrite())
    tag.bump("p", 1000)
    await tick(clock)
    assert value_of(cm, "p") == 500
    await tick(clock)
    assert value_of(cm, "p") == 250
    tag.bump("p", 1000)
    assert value_of(cm, "p") == 1000


async def test_misaligned_intervals_decay_on_the_right_ticks(
    cm: ConnManager, clock: FakeClock
) -> None:  # item 20
    # Registered at t=0: due at 1.5, 3.0, 4.5, 6.0 -> visited on the ticks at 2, 3, 5, 6.
    tag = cm.register_decaying_tag("odd", 1.5, decay_fixed(1), bump_sum_unbounded())
    assert tag.interval == 1.5
    tag.bump("p", 100)
    seen = []
    for _ in range(6):
        await tick(clock)
        seen.append(value_of(cm, "p"))
    assert seen == [100, 99, 98, 98, 97, 96]


async def test_interval_below_resolution_is_raised(cm: ConnManager) -> None:
    tag = cm.register_decaying_tag("fast", 0.1, decay_none(), bump_sum_unbounded())
    assert tag.interval == RESOLUTION


async def test_remove_drops_one_peer(cm: ConnManager) -> None:  # item 20
    tag = cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())
    tag.bump("p", 5)
    tag.bump("q", 7)
    tag.remove("p")
    assert value_of(cm, "p", "t") is None
    assert value_of(cm, "p") == 0
    assert value_of(cm, "q") == 7
    tag.remove("nobody")  # no value, no entry
    assert cm.get_tag_info("nobody") is None


async def test_close_removes_everywhere_and_later_bumps_raise(cm: ConnManager) -> None:  # 20
    tag = cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())
    tag.bump("p", 5)
    tag.bump("q", 7)
    tag.close()
    tag.close()  # idempotent
    assert (value_of(cm, "p"), value_of(cm, "q")) == (0, 0)
    with pytest.raises(ManagerClosedError):
        tag.bump("p", 1)
    with pytest.raises(ManagerClosedError):
        tag.remove("p")
    again = cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())  # name freed
    again.bump("p", 1)
    assert value_of(cm, "p") == 1


async def test_registering_a_name_twice_raises(cm: ConnManager) -> None:  # item 20
    cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())
    with pytest.raises(ValueError, match="already registered"):
        cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())


async def test_expire_when_inactive(cm: ConnManager, clock: FakeClock) -> None:  # item 27
    tag = cm.register_decaying_tag("seen", 1, decay_expire_when_inactive(3), bump_overwrite())
    tag.bump("p", 50)
    tag.bump("q", 60)
    for _ in range(5):  # q is bumped every second: kept, value unchanged
        await tick(clock)
        tag.bump("q", 60)
        assert value_of(cm, "q", "seen") == 60
    # p was last bumped at 0: kept (with its value) at 1 and 2, expired at 3.
    assert value_of(cm, "p", "seen") is None
    values_seen = []
    tag.bump("p", 50)
    for _ in range(3):
        values_seen.append(value_of(cm, "p", "seen"))
        await tick(clock)
    assert values_seen == [50, 50, 50]
    assert value_of(cm, "p", "seen") is None


async def test_decay_function_sees_the_current_visit(cm: ConnManager, clock: FakeClock) -> None:
    visits: list[DecayingValue] = []

    def record(value: DecayingValue) -> tuple[int, bool]:
        visits.append(value)
        return value.value, False

    tag = cm.register_decaying_tag("rec", 1, record, bump_sum_unbounded())
    tag.bump("p", 1)
    await tick(clock, 2)
    assert [(v.last_visit, v.last_bump, v.added) for v in visits] == [(1, 0, 0), (2, 0, 0)]


async def test_failing_decay_function_keeps_the_value(cm: ConnManager, clock: FakeClock) -> None:
    # item 28: the failure is counted, the value kept, the other tags keep decaying.
    def boom(value: DecayingValue) -> tuple[int, bool]:
        raise RuntimeError("bad decay")

    broken = cm.register_decaying_tag("broken", 1, boom, bump_sum_unbounded())
    fine = cm.register_decaying_tag("fine", 1, decay_fixed(1), bump_sum_unbounded())
    broken.bump("p", 10)
    fine.bump("p", 10)
    await tick(clock, 2)
    assert value_of(cm, "p", "broken") == 10
    assert value_of(cm, "p", "fine") == 8
    info = cm.get_info()
    assert info.decay_failures == 2
    assert info.running
    assert info.loop_failures["decayer"] == 0


async def test_callbacks_may_call_back_into_the_manager(cm: ConnManager, clock: FakeClock) -> None:
    holder: list[DecayingTag] = []

    def decay_and_tag(value: DecayingValue) -> tuple[int, bool]:
        cm.tag_peer(value.peer, "seen-decay", 1)
        holder[0].bump("q", 1)  # same tag, another peer, during the visit
        return value.value - 1, False

    tag = cm.register_decaying_tag("t", 1, decay_and_tag, bump_sum_unbounded())
    holder.append(tag)
    tag.bump("p", 10)
    await tick(clock)
    assert value_of(cm, "p", "t") == 9
    assert value_of(cm, "p", "seen-decay") == 1
    assert value_of(cm, "q", "t") == 1
    cm._check_invariants()


async def test_decaying_values_count_in_trims_and_go_with_the_peer(
    cm: ConnManager, clock: FakeClock
) -> None:
    tag = cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())
    tag.bump("q", 5)
    conns = open_conns(cm, ["r"])
    await applied(cm)
    result = await cm.trim_open_conns()
    assert [victim.peer for victim in result.victims][-1] == "q"  # the most valuable goes last
    assert conns[0].closed
    assert cm.get_tag_info("q") is None  # closed: its decaying value went with it
    tag.bump("q", 1)
    assert value_of(cm, "q", "t") == 1  # a fresh temporary entry, from zero


async def test_bad_registration_arguments(cm: ConnManager) -> None:
    with pytest.raises(ValueError, match="name"):
        cm.register_decaying_tag("", 1, decay_none(), bump_sum_unbounded())
    with pytest.raises(ValueError, match="interval"):
        cm.register_decaying_tag("t", 0, decay_none(), bump_sum_unbounded())
    with pytest.raises(TypeError, match="decay_fn"):
        cm.register_decaying_tag("t", 1, 3, bump_sum_unbounded())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bump_fn"):
        cm.register_decaying_tag("t", 1, decay_none(), None)  # type: ignore[arg-type]
    tag = cm.register_decaying_tag("t", 1, decay_none(), bump_sum_unbounded())
    with pytest.raises(TypeError, match="delta"):
        tag.bump("p", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coef"):
        decay_linear(1.5)
    with pytest.raises(ValueError, match="min"):
        bump_sum_bounded(5, 1)
