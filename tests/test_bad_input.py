"""Bad input: every public call rejects a wrong argument by name and changes nothing.

Each case calls one public method with one bad argument (everything else valid) and checks
three things: the exception is a `TypeError` or a `ValueError` (as asked), its message names
the argument, and the manager's observable state is exactly what it was before the call
(counters, every known peer's tags and protections, temporary entries, decaying values).
Notifications are the exception to "raise": a bad connection handed to the notifiee must never
raise into the host; it is counted as ignored and changes nothing else.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest

from asyncconnmgr import (
    BumpFn,
    ConnManager,
    DecayingTag,
    DecayingValue,
    Direction,
    ManagerInfo,
    TagInfo,
    bump_overwrite,
    bump_sum_bounded,
    bump_sum_unbounded,
    decay_expire_when_inactive,
    decay_fixed,
    decay_linear,
    decay_none,
)
from asyncconnmgr.testing import FakeClock, FakeConn, settle

pytestmark = pytest.mark.anyio


# --- a manager with some state to disturb ------------------------------------------------------

KNOWN = "known"  # a connected peer with tags, a protection and a decaying value
EARLY = "early"  # a temporary entry (tagged, never connected)
FRESH = "fresh"  # unknown to the manager: a bad call must not create an entry for it
PEERS: tuple[Hashable, ...] = (KNOWN, EARLY, FRESH)

UNHASHABLE: list[Any] = [[], {}, {1}]


@attrs.frozen
class Fixture:
    manager: ConnManager
    clock: FakeClock
    dtag: DecayingTag
    spare: DecayingTag
    conn: FakeConn
    # The spare tag's bump function delegates to the last function in this list, so that a
    # case can make it misbehave on a tag that already holds values.
    spare_bump: list[BumpFn]


@asynccontextmanager
async def populated() -> AsyncIterator[Fixture]:
    clock = FakeClock(start=1000)
    manager = ConnManager(low_water=2, high_water=4, grace_period=30, silence_period=5, clock=clock)
    async with manager:
        conn = FakeConn(KNOWN, direction=Direction.OUTBOUND)
        manager.notifee().connected(conn)
        await manager.flush()
        manager.tag_peer(KNOWN, "a", 3)
        manager.tag_peer(KNOWN, "b", -1)
        manager.protect(KNOWN, "relay")
        manager.tag_peer(EARLY, "a", 7)
        dtag = manager.register_decaying_tag("gossip", 10, decay_none(), bump_sum_unbounded())
        dtag.bump(KNOWN, 4)
        spare_bump: list[BumpFn] = [bump_sum_unbounded()]
        spare = manager.register_decaying_tag(
            "spare", 10, decay_none(), lambda value, delta: spare_bump[-1](value, delta)
        )
        spare.bump(KNOWN, 2)
        spare.bump(EARLY, 5)
        await settle()
        yield Fixture(manager, clock, dtag, spare, conn, spare_bump)


@attrs.frozen
class Snapshot:
    """Everything observable about the manager, as comparable values."""

    info: ManagerInfo
    tag_infos: tuple[TagInfo | None, ...]
    protected: tuple[bool, ...]
    protected_relay: tuple[bool, ...]


def snapshot(manager: ConnManager) -> Snapshot:
    return Snapshot(
        manager.get_info(),
        tuple(manager.get_tag_info(peer) for peer in PEERS),
        tuple(manager.is_protected(peer) for peer in PEERS),
        tuple(manager.is_protected(peer, "relay") for peer in PEERS),
    )


def check_rejected(
    fx: Fixture,
    call: Callable[[], object],
    error: type[Exception],
    names: tuple[str, ...],
) -> None:
    before = snapshot(fx.manager)
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) in (TypeError, ValueError), caught.value
    message = str(caught.value)
    for name in names:
        assert name in message, f"{message!r} does not name {name!r}"
    assert snapshot(fx.manager) == before, "a rejected call changed the state"
    fx.manager._check_invariants()


# --- the table of bad calls --------------------------------------------------------------------


def returns(value: object) -> Callable[[int], Any]:
    def fn(current: int) -> Any:
        return value

    fn.__qualname__ = f"returns-{value!r}"
    return fn


def bump_returns(value: object) -> BumpFn:
    def fn(current: DecayingValue, delta: int) -> Any:
        return value

    fn.__qualname__ = f"returns-{value!r}"
    return fn


def _bump_spare(fx: Fixture, args: dict[str, Any]) -> None:
    # The spare tag already holds values, so a half-applied bump would show in the snapshot.
    fx.spare_bump.append(args["bump_fn"])
    fx.spare.bump(args["peer"], 1)


Call = Callable[[Fixture, dict[str, Any]], object]

#: Every public synchronous method, with valid arguments; each case spoils one of them.
METHODS: dict[str, tuple[Call, dict[str, Any]]] = {
    "tag_peer": (
        lambda fx, a: fx.manager.tag_peer(a["peer"], a["tag"], a["value"]),
        {"peer": KNOWN, "tag": "a", "value": 1},
    ),
    "untag_peer": (
        lambda fx, a: fx.manager.untag_peer(a["peer"], a["tag"]),
        {"peer": KNOWN, "tag": "a"},
    ),
    "upsert_tag": (
        lambda fx, a: fx.manager.upsert_tag(a["peer"], a["tag"], a["fn"]),
        {"peer": KNOWN, "tag": "a", "fn": lambda v: v + 1},
    ),
    "get_tag_info": (lambda fx, a: fx.manager.get_tag_info(a["peer"]), {"peer": KNOWN}),
    "protect": (
        lambda fx, a: fx.manager.protect(a["peer"], a["tag"]),
        {"peer": KNOWN, "tag": "relay"},
    ),
    "unprotect": (
        lambda fx, a: fx.manager.unprotect(a["peer"], a["tag"]),
        {"peer": KNOWN, "tag": "relay"},
    ),
    "is_protected": (
        lambda fx, a: fx.manager.is_protected(a["peer"], a["tag"]),
        {"peer": KNOWN, "tag": "relay"},
    ),
    "check_limit": (lambda fx, a: fx.manager.check_limit(a["limit"]), {"limit": 10}),
    "register_decaying_tag": (
        lambda fx, a: fx.manager.register_decaying_tag(
            a["name"], a["interval"], a["decay_fn"], a["bump_fn"]
        ),
        {"name": "other", "interval": 10, "decay_fn": decay_none(), "bump_fn": bump_overwrite()},
    ),
    "DecayingTag.bump": (
        lambda fx, a: fx.dtag.bump(a["peer"], a["delta"]),
        {"peer": KNOWN, "delta": 1},
    ),
    "DecayingTag.remove": (lambda fx, a: fx.dtag.remove(a["peer"]), {"peer": KNOWN}),
    "DecayingTag.bump_fn": (_bump_spare, {"peer": KNOWN, "bump_fn": bump_sum_unbounded()}),
}

BAD_TAGS: list[tuple[object, type[Exception]]] = [
    ("", ValueError),
    (None, TypeError),
    (1, TypeError),
    (b"a", TypeError),
    (("a",), TypeError),
]
BAD_INTS: list[tuple[object, type[Exception]]] = [
    ("1", TypeError),
    (1.0, TypeError),
    (1.5, TypeError),
    (True, TypeError),
    (None, TypeError),
]
BAD_SECONDS: list[tuple[object, type[Exception]]] = [
    (0, ValueError),
    (-1, ValueError),
    (-0.5, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    ("10", TypeError),
    (True, TypeError),
    (None, TypeError),
]
NOT_CALLABLE: list[tuple[object, type[Exception]]] = [
    (None, TypeError),
    (5, TypeError),
    ("lambda v: v", TypeError),
]
NOT_AN_INT_RESULT: list[object] = ["3", 3.0, True, None]

#: What is wrong with each kind of argument, and what it must raise.
BAD_VALUES: dict[str, list[tuple[object, type[Exception]]]] = {
    "peer": [*((bad, TypeError) for bad in UNHASHABLE), (None, TypeError)],
    "tag": BAD_TAGS,
    "name": BAD_TAGS,
    "value": BAD_INTS,
    "delta": BAD_INTS,
    "limit": [*BAD_INTS, (-1, ValueError)],
    "interval": BAD_SECONDS,
    "fn": [
        *NOT_CALLABLE,
        *((returns(result), TypeError) for result in NOT_AN_INT_RESULT),
    ],
    "decay_fn": NOT_CALLABLE,
    "bump_fn": [
        *NOT_CALLABLE,
        *((bump_returns(result), TypeError) for result in NOT_AN_INT_RESULT),
    ],
}


@attrs.frozen
class Case:
    id: str
    call: Call
    args: dict[str, Any]
    error: type[Exception]
    names: tuple[str, ...]


def _label(value: object) -> str:
    if callable(value) and not isinstance(value, type):
        return str(getattr(value, "__qualname__", "fn")).split(".")[0]
    return repr(value) if not isinstance(value, (list, dict, set)) else type(value).__name__


def _cases() -> list[Case]:
    cases: list[Case] = []
    for method, (call, good) in METHODS.items():
        for arg in good:
            bad_values = BAD_VALUES[arg]
            if method == "DecayingTag.bump_fn":
                # Functions that misbehave when called (the spare tag is registered already).
                bad_values = [(f, e) for f, e in bad_values if callable(f)]
            elif method == "register_decaying_tag":
                # Functions are only checked for being callable when a tag is registered.
                bad_values = [(f, e) for f, e in bad_values if not callable(f)]
            # Spoiling a non-peer argument is tried on a known, a temporary and an unknown
            # peer: a check that ran after the entry was created would show as a change.
            peers = [KNOWN, EARLY, FRESH] if "peer" in good and arg != "peer" else [None]
            for bad, error in bad_values:
                if method == "is_protected" and arg == "tag" and bad is None:
                    continue  # is_protected(peer, None) means "under any tag"
                for peer in peers:
                    args = {**good, arg: bad}
                    if peer is not None:
                        args["peer"] = peer
                    suffix = f"-{peer}" if peer is not None else ""
                    names = ("bump_fn",) if method == "DecayingTag.bump_fn" else (arg,)
                    cases.append(
                        Case(f"{method}-{arg}-{_label(bad)}{suffix}", call, args, error, names)
                    )
    # A decaying tag's name that is already taken.
    call, good = METHODS["register_decaying_tag"]
    cases.append(
        Case(
            "register_decaying_tag-name-taken",
            call,
            {**good, "name": "gossip"},
            ValueError,
            ("name", "gossip"),
        )
    )
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_public_method_rejects_bad_argument_by_name(case: Case) -> None:
    async with populated() as fx:
        check_rejected(fx, lambda: case.call(fx, case.args), case.error, case.names)


# --- constructors and presets: nothing to disturb, but the error must name the argument ------

VALID_CONFIG: dict[str, Any] = {
    "low_water": 2,
    "high_water": 4,
    "grace_period": 1.0,
    "silence_period": 1.0,
    "close_timeout": 1.0,
    "close_concurrency": 4,
    "decay_resolution": 1.0,
}


def _config_cases() -> list[tuple[str, dict[str, Any], type[Exception], tuple[str, ...]]]:
    cases: list[tuple[str, dict[str, Any], type[Exception], tuple[str, ...]]] = []
    for name in ("low_water", "high_water", "close_concurrency"):
        for bad, error in BAD_VALUES["limit"]:  # the same wrong ints, and -1
            cases.append((f"{name}-{bad!r}", {name: bad}, error, (name,)))
    cases.append(
        ("close_concurrency-0", {"close_concurrency": 0}, ValueError, ("close_concurrency",))
    )
    cases.append(
        (
            "inverted-water-marks",
            {"low_water": 5, "high_water": 3},
            ValueError,
            ("low_water", "high_water"),
        )
    )
    for name in ("grace_period", "silence_period", "close_timeout", "decay_resolution"):
        for bad, error in BAD_SECONDS:
            if name == "grace_period" and bad == 0:
                continue  # a grace period of 0 is allowed
            cases.append((f"{name}-{bad!r}", {name: bad}, error, (name,)))
    cases.append(("clock-object", {"clock": object()}, TypeError, ("clock",)))
    cases.append(
        (
            "clock-not-callable",
            {"clock": attrs.make_class("C", ["now"])(1.0)},
            TypeError,
            ("clock",),
        )
    )
    cases.append(("policy-object", {"policy": object()}, TypeError, ("policy",)))
    cases.append(("unknown-keyword", {"hi_water": 3}, TypeError, ("hi_water",)))
    return cases


CONFIG_CASES = _config_cases()


@pytest.mark.parametrize(
    ("overrides", "error", "names"),
    [case[1:] for case in CONFIG_CASES],
    ids=[case[0] for case in CONFIG_CASES],
)
def test_constructor_rejects_bad_argument_by_name(
    overrides: dict[str, Any], error: type[Exception], names: tuple[str, ...]
) -> None:
    with pytest.raises(error) as caught:
        ConnManager(**{**VALID_CONFIG, **overrides})
    for name in names:
        assert name in str(caught.value)


def test_constructor_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        ConnManager(2, 4)  # type: ignore[call-arg]


def untyped(value: object) -> Any:
    """Hands a deliberately wrong value past the type checker."""
    return value


PRESET_CASES: list[tuple[str, Callable[[], object], type[Exception], tuple[str, ...]]] = [
    ("decay_fixed-str", lambda: decay_fixed(untyped("1")), TypeError, ("minuend",)),
    ("decay_fixed-bool", lambda: decay_fixed(True), TypeError, ("minuend",)),
    ("decay_fixed-float", lambda: decay_fixed(untyped(1.5)), TypeError, ("minuend",)),
    ("decay_linear-0", lambda: decay_linear(0), ValueError, ("coef",)),
    ("decay_linear-1", lambda: decay_linear(1), ValueError, ("coef",)),
    ("decay_linear-negative", lambda: decay_linear(-0.5), ValueError, ("coef",)),
    ("decay_linear-nan", lambda: decay_linear(math.nan), ValueError, ("coef",)),
    ("decay_linear-str", lambda: decay_linear(untyped("0.5")), TypeError, ("coef",)),
    ("decay_linear-bool", lambda: decay_linear(True), TypeError, ("coef",)),
    ("expire-negative", lambda: decay_expire_when_inactive(-1), ValueError, ("after",)),
    ("expire-nan", lambda: decay_expire_when_inactive(math.nan), ValueError, ("after",)),
    ("expire-str", lambda: decay_expire_when_inactive(untyped("1")), TypeError, ("after",)),
    ("bump_sum_bounded-inverted", lambda: bump_sum_bounded(5, 1), ValueError, ("min", "max")),
    ("bump_sum_bounded-min-str", lambda: bump_sum_bounded(untyped("0"), 1), TypeError, ("min",)),
    ("bump_sum_bounded-max-float", lambda: bump_sum_bounded(0, untyped(1.5)), TypeError, ("max",)),
    ("FakeClock.advance-negative", lambda: FakeClock().advance(-1), ValueError, ("seconds",)),
    ("FakeClock.advance-nan", lambda: FakeClock().advance(math.nan), ValueError, ("seconds",)),
    ("FakeClock.advance-str", lambda: FakeClock().advance(untyped("1")), TypeError, ("seconds",)),
]


@pytest.mark.parametrize(
    ("make", "error", "names"),
    [case[1:] for case in PRESET_CASES],
    ids=[case[0] for case in PRESET_CASES],
)
def test_preset_rejects_bad_argument_by_name(
    make: Callable[[], object], error: type[Exception], names: tuple[str, ...]
) -> None:
    with pytest.raises(error) as caught:
        make()
    for name in names:
        assert name in str(caught.value)


# --- the async surface ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deadline", "error"),
    [("soon", TypeError), (True, TypeError), ([1.0], TypeError), (math.nan, ValueError)],
    ids=["str", "bool", "list", "nan"],
)
async def test_trim_rejects_bad_deadline_by_name(deadline: Any, error: type[Exception]) -> None:
    async with populated() as fx:
        # Three eligible connections, one above low water: a trim that ran would close one
        # (and the count stays at high water, so no background trim does it first).
        conns = [FakeConn(f"victim-{i}") for i in range(3)]
        for conn in conns:
            fx.manager.notifee().connected(conn)
        await fx.manager.flush()
        fx.clock.advance(31)  # out of grace
        await settle()
        before = snapshot(fx.manager)
        with pytest.raises(error) as caught:
            await fx.manager.trim_open_conns(deadline=deadline)
        assert "deadline" in str(caught.value)
        assert snapshot(fx.manager) == before
        assert all(conn.close_calls == 0 for conn in conns)
        fx.manager._check_invariants()


# --- notifications never raise, whatever the host hands over ---------------------------------


@attrs.define  # eq=True and no hash: a host's dataclass-like connection type
class UnhashableConn:
    remote_peer: Hashable
    direction: Direction = Direction.INBOUND
    num_streams: int = 0
    remote_addr: str | None = None

    async def close(self) -> None:
        pass


@attrs.define(eq=False)
class BrokenConn:
    """remote_peer raises, as a half-initialised transport object might."""

    direction: Direction = Direction.INBOUND
    num_streams: int = 0
    remote_addr: str | None = None

    @property
    def remote_peer(self) -> Hashable:
        raise RuntimeError("not connected yet")

    async def close(self) -> None:
        pass


BAD_CONNS: list[tuple[str, Callable[[], object]]] = [
    ("None", lambda: None),
    ("object", object),
    ("int", lambda: 42),
    ("unhashable-conn-of-known-peer", lambda: UnhashableConn(KNOWN)),
    ("unhashable-conn-of-temporary-peer", lambda: UnhashableConn(EARLY)),
    ("unhashable-conn-of-fresh-peer", lambda: UnhashableConn(FRESH)),
    ("unhashable-peer", lambda: FakeConn(untyped(["not", "hashable"]))),
    ("remote_peer-raises", BrokenConn),
]


@pytest.mark.parametrize("kind", ["connected", "disconnected"])
@pytest.mark.parametrize("make", [make for _, make in BAD_CONNS], ids=[i for i, _ in BAD_CONNS])
async def test_notifiee_never_raises_and_ignores_bad_connection(
    kind: str, make: Callable[[], object]
) -> None:
    async with populated() as fx:
        before = snapshot(fx.manager)
        notify = getattr(fx.manager.notifee(), kind)
        notify(make())  # must not raise into the host
        await fx.manager.flush()
        await settle()
        after = snapshot(fx.manager)
        assert after.info == attrs.evolve(
            before.info, ignored_notifications=before.info.ignored_notifications + 1
        ), "a bad notification must be counted as ignored and change nothing else"
        assert attrs.evolve(after, info=before.info) == before, "it changed a peer"
        fx.manager._check_invariants()
