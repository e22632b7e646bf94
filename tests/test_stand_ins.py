"""The stand-ins: `NullConnManager` and `FakeClock` behave like what they stand in for.

Code typed against `asyncconnmgr.abc.ConnManager` takes a `ConnManager` or a
`NullConnManager` alike, `async with` and decaying tags included, at run time and under
`mypy --strict`. `FakeClock` refuses times that would make a test meaningless.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncconnmgr import (
    ConnManager,
    DecayingValue,
    NullConnManager,
    abc,
    bump_sum_unbounded,
    decay_none,
)
from asyncconnmgr.testing import FakeClock, FakeConn, settle

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


def untyped(value: object) -> Any:
    """Hands a deliberately wrong value past the type checker."""
    return value


def keep(value: DecayingValue) -> tuple[int, bool]:
    return value.value, False


def add(value: DecayingValue, delta: int) -> int:
    return value.value + delta


# --- code typed against the protocol takes either manager -------------------------------------


async def run_host(manager: abc.ConnManager, conn: FakeConn) -> abc.ConnManager:
    """What a host typed against the protocol does: enter, report, tag, bump, trim, leave."""
    async with manager as running:
        running.notifee().connected(conn)
        await running.flush()
        running.tag_peer("p", "dht", 3)
        gossip = running.register_decaying_tag("gossip", 10, decay_none(), bump_sum_unbounded())
        gossip.bump("p", 4)
        await running.trim_open_conns()
        gossip.close()
        return running


async def test_a_host_typed_against_the_protocol_runs_the_real_manager() -> None:
    manager = ConnManager(low_water=5, high_water=10, clock=FakeClock())
    conn = FakeConn("p")

    entered = await run_host(manager, conn)

    assert entered is manager
    info = manager.get_info()
    assert info.closed
    assert info.conn_count == 1  # below low water: the trim closed nothing
    assert not conn.closed


async def test_a_host_typed_against_the_protocol_runs_the_null_manager() -> None:
    manager = NullConnManager()
    conn = FakeConn("p")

    entered = await run_host(manager, conn)

    assert entered is manager
    assert manager.get_tag_info("p").value == 0
    assert manager.get_info().conn_count == 0
    assert not conn.closed


def test_both_managers_satisfy_the_protocol_and_a_partial_one_does_not() -> None:
    class NotEnterable:
        """Every method of the protocol except `__aenter__`/`__aexit__`."""

    for name in dir(NullConnManager):
        if not name.startswith("_"):
            setattr(NotEnterable, name, getattr(NullConnManager, name))

    assert isinstance(ConnManager(clock=FakeClock()), abc.ConnManager)
    assert isinstance(NullConnManager(), abc.ConnManager)
    assert not isinstance(NotEnterable(), abc.ConnManager)


async def test_null_manager_is_entered_as_itself_any_number_of_times() -> None:
    manager = NullConnManager()
    async with manager as first, manager as second:
        assert first is manager
        assert second is manager


async def test_null_manager_lets_the_body_exception_out_as_itself() -> None:
    manager = NullConnManager()
    with pytest.raises(KeyError, match="mine"):
        async with manager:
            raise KeyError("mine")


async def test_null_manager_entering_is_a_checkpoint() -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with NullConnManager():
            pytest.fail("a cancelled scope entered the body")
    assert scope.cancelled_caught


# --- NullConnManager.register_decaying_tag ----------------------------------------------------


async def test_null_decaying_tag_does_nothing() -> None:
    async with NullConnManager() as manager:
        tag = manager.register_decaying_tag("gossip", 30, keep, add)
        tag.bump("p", 5)
        tag.remove("p")
        tag.remove("never-bumped")
        assert manager.get_tag_info("p").tags == {}
        assert (tag.name, tag.interval, tag.closed) == ("gossip", 30.0, False)
        tag.close()
        tag.close()
        assert tag.closed
        tag.bump("p", 1)  # a null handle never raises, closed or not
        tag.remove("p")
        again = manager.register_decaying_tag("gossip", 30, keep, add)
        assert again is not tag
        assert isinstance(tag, abc.DecayingTag)


BAD_REGISTRATIONS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("name-int", {"name": 1}, TypeError, "name"),
    ("name-empty", {"name": ""}, ValueError, "name"),
    ("interval-str", {"interval": "1"}, TypeError, "interval"),
    ("interval-bool", {"interval": True}, TypeError, "interval"),
    ("interval-zero", {"interval": 0}, ValueError, "interval"),
    ("interval-negative", {"interval": -1}, ValueError, "interval"),
    ("interval-nan", {"interval": math.nan}, ValueError, "interval"),
    ("interval-inf", {"interval": math.inf}, ValueError, "interval"),
    ("decay_fn", {"decay_fn": 3}, TypeError, "decay_fn"),
    ("bump_fn", {"bump_fn": None}, TypeError, "bump_fn"),
]


@asynccontextmanager
async def both_managers() -> AsyncIterator[tuple[ConnManager, NullConnManager]]:
    async with (
        ConnManager(clock=FakeClock()) as real,
        NullConnManager() as null,
    ):
        yield real, null


@pytest.mark.parametrize(
    ("bad", "error", "name"),
    [case[1:] for case in BAD_REGISTRATIONS],
    ids=[case[0] for case in BAD_REGISTRATIONS],
)
async def test_null_register_decaying_tag_checks_arguments_as_the_real_one(
    bad: dict[str, Any], error: type[Exception], name: str
) -> None:
    arguments: dict[str, Any] = {
        "name": "gossip",
        "interval": 30,
        "decay_fn": keep,
        "bump_fn": add,
        **bad,
    }
    async with both_managers() as (real, null):
        for manager in (real, null):
            register: Callable[..., object] = manager.register_decaying_tag
            with pytest.raises(error) as caught:
                register(**arguments)
            assert name in str(caught.value), (manager, caught.value)
        # The real manager kept no trace of the refused registration: the name is free.
        real.register_decaying_tag("gossip", 30, keep, add)


# --- mypy --strict on a user's script ---------------------------------------------------------

USER_SCRIPT = """
from __future__ import annotations

import anyio

from asyncconnmgr import ConnManager, NullConnManager, bump_sum_bounded, decay_linear
from asyncconnmgr.abc import ConnManager as AnyConnManager, DecayingTag
from asyncconnmgr.testing import FakeClock


async def serve(manager: AnyConnManager) -> int:
    async with manager as running:
        running.tag_peer("bootstrap", "bootstrap", 50)
        tag: DecayingTag = running.register_decaying_tag(
            "gossip", 30.0, decay_linear(0.5), bump_sum_bounded(0, 100)
        )
        tag.bump("peer", 5)
        result = await running.trim_open_conns(deadline=None)
        tag.close()
        return result.closed


async def main() -> None:
    await serve(ConnManager(low_water=1, high_water=2, clock=FakeClock()))
    await serve(NullConnManager())


anyio.run(main)
"""

# The same script with one mistake a type checker must catch: proof that the check runs.
BROKEN_SCRIPT = USER_SCRIPT.replace('tag.bump("peer", 5)', 'tag.bump("peer", "5")')


def mypy_strict(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-version",
            "3.10",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--no-error-summary",
            str(script),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=240,
    )


def test_a_script_typed_against_the_protocol_passes_mypy_strict(tmp_path: Path) -> None:
    checked = mypy_strict(tmp_path, USER_SCRIPT)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    broken = mypy_strict(tmp_path, BROKEN_SCRIPT)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert '"bump" of "DecayingTag"' in broken.stdout, broken.stdout
    assert "[arg-type]" in broken.stdout, broken.stdout


# --- FakeClock refuses non-finite times -------------------------------------------------------


@pytest.mark.parametrize("start", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_fake_clock_refuses_a_non_finite_start(start: float) -> None:
    with pytest.raises(ValueError, match="start"):
        FakeClock(start=start)


@pytest.mark.parametrize("start", ["1", True, None], ids=["str", "bool", "None"])
def test_fake_clock_refuses_a_start_that_is_not_a_number(start: object) -> None:
    with pytest.raises(TypeError, match="start"):
        FakeClock(start=untyped(start))


def test_fake_clock_takes_any_finite_start() -> None:
    assert FakeClock(start=-5).now() == -5.0
    assert FakeClock(start=1_000).now() == 1000.0
    assert FakeClock().now() == 0.0


@pytest.mark.parametrize("seconds", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
async def test_fake_clock_refuses_to_advance_by_a_non_finite_time(seconds: float) -> None:
    clock = FakeClock(start=10)
    woken: list[float] = []

    async def sleeper() -> None:
        await clock.sleep_until(1e300)
        woken.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await settle()
        with pytest.raises(ValueError, match="seconds"):
            clock.advance(seconds)
        await settle()
        assert clock.now() == 10.0  # time did not move
        assert woken == []  # and no sleeper woke
        assert clock.next_deadline == 1e300
        clock.advance(1e300)
        await settle()
    assert woken == [1e300 + 10]


async def test_fake_clock_refuses_a_nan_deadline() -> None:
    clock = FakeClock()
    raised: list[BaseException] = []

    async def sleeper() -> None:
        try:
            await clock.sleep_until(math.nan)
        except ValueError as exc:
            raised.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await settle()
        tg.cancel_scope.cancel()  # a sleeper that was not refused would wait for ever
    assert len(raised) == 1
    assert "deadline" in str(raised[0])
    assert clock.next_deadline is None
