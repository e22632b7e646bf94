"""Running scenarios: one run, or every scenario under every policy."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio

import asyncconnmgr

from .. import Candidate, ConnManager, DefaultPolicy, default_key
from ..testing import FakeClock
from ._report import Figures
from ._scenarios import SCENARIOS, Scenario
from ._world import ATTACKER_PREFIX, World, drive_clock

__all__ = [
    "BOUNDED_COUNT_SETTINGS",
    "MANAGER_SETTINGS",
    "available_policies",
    "check_settings",
    "run",
    "run_async",
    "run_matrix",
]

#: The settings of the bounded count (`ConnManager(bounded_count=, ceiling=, grace_budget=)`).
BOUNDED_COUNT_SETTINGS: tuple[str, ...] = ("bounded_count", "ceiling", "grace_budget")
#: Every manager setting a run accepts in `settings` (the scenario fixes the others).
MANAGER_SETTINGS: tuple[str, ...] = (*BOUNDED_COUNT_SETTINGS, "close_concurrency", "close_timeout")


def available_policies() -> tuple[str, ...]:
    """The policies this installation can compare: "default" (`DefaultPolicy`),
    "diversity" (`DiversityPolicy`, where the package has it), "libp2p" (py-libp2p
    0.8.1's pruner rules, re-implemented here; py-libp2p itself is not needed) and "oracle"
    (`AttackersFirst`, a yardstick no host could run)."""
    names = ["default"]
    if hasattr(asyncconnmgr, "DiversityPolicy"):
        names.append("diversity")
    names += ["libp2p", "oracle"]
    return tuple(names)


#: The policies run only as they are, not also with `bounded_count=False` (see `run_matrix`).
_ONE_VARIANT = ("libp2p", "oracle")


class AttackersFirst:
    """The "oracle": closes every attacker before any honest peer, then the default order.

    It knows who the attackers are (the simulator names them), which no real policy can:
    it shows the best any victim order could do with the same trims, so a figure it cannot
    improve on either is set by when the trims run and how fast attackers come back, not by
    whom they choose.
    """

    __slots__ = ()

    def select(self, candidates: Sequence[Candidate], target: int, now: float) -> list[Candidate]:
        return sorted(candidates, key=_attackers_first)

    def __repr__(self) -> str:
        return "AttackersFirst()"


def _attackers_first(candidate: Candidate) -> tuple[bool, tuple[int, bool, bool, int, float, int]]:
    return not str(candidate.peer).startswith(ATTACKER_PREFIX), default_key(candidate)


def _policy_object(name: str, seed: int) -> object:
    if name == "default":
        return DefaultPolicy()
    if name == "oracle":
        return AttackersFirst()
    cls: Any = asyncconnmgr.DiversityPolicy
    if "secret" in inspect.signature(cls).parameters:
        # A secret fixed by the seed, so that a run can be repeated.
        return cls(secret=f"asyncconnmgr.sim:{seed}".encode())
    return cls()


def _check_scenario(scenario: object, quick: object) -> Scenario:
    if type(quick) is not bool:
        raise TypeError(f"quick must be a bool, not {type(quick).__name__}")
    if isinstance(scenario, str):
        found = SCENARIOS.get(scenario)
        if found is None:
            raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, got {scenario!r}")
        scenario = found
    elif not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a name or a Scenario, not {type(scenario).__name__}")
    return scenario.quick() if quick else scenario


def _check_policy(policy: object) -> str:
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a str, not {type(policy).__name__}")
    if policy not in available_policies():
        raise ValueError(f"policy must be one of {available_policies()}, got {policy!r}")
    return policy


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    return seed


def check_settings(settings: Mapping[str, object] | None, scenario: Scenario) -> dict[str, object]:
    """The manager settings as keyword arguments for `ConnManager`, checked by building one
    (outside any event loop): TypeError or ValueError naming the setting if one is wrong,
    ValueError for a name that is not in `MANAGER_SETTINGS`."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a mapping, not {type(settings).__name__}")
    chosen = dict(settings)
    for key in chosen:
        if key not in MANAGER_SETTINGS:
            raise ValueError(f"settings: {key!r} is not one of {MANAGER_SETTINGS}")
    _manager(scenario, chosen, FakeClock(), None)
    return chosen


def _manager(
    scenario: Scenario, settings: Mapping[str, Any], clock: FakeClock, policy: object
) -> ConnManager:
    return ConnManager(
        low_water=scenario.low_water,
        high_water=scenario.high_water,
        grace_period=scenario.grace_period,
        silence_period=scenario.silence_period,
        decay_resolution=scenario.decay_resolution,
        clock=clock,
        policy=policy,
        **settings,
    )


def _tag_store(scenario: Scenario, clock: FakeClock) -> ConnManager:
    """A manager that never trims: the tags, decaying tags and protections of the libp2p
    baseline (py-libp2p's `TagStore`)."""
    return ConnManager(
        low_water=0,
        high_water=0,
        grace_period=scenario.grace_period,
        silence_period=scenario.silence_period,
        decay_resolution=scenario.decay_resolution,
        clock=clock,
        bounded_count=False,
    )


def _default_ceiling(scenario: Scenario) -> int:
    probe = _manager(scenario, {}, FakeClock(), None).get_info().ceiling
    if probe is not None:
        return probe
    return scenario.high_water + max(1, (scenario.high_water - scenario.low_water) // 2)


async def run_async(
    scenario: str | Scenario = "churn",
    policy: str = "default",
    *,
    seed: int = 1,
    settings: Mapping[str, object] | None = None,
    quick: bool = False,
) -> Figures:
    """Runs one scenario under one policy on the running event loop (asyncio or trio).

    Arguments:
        scenario: a name in `SCENARIOS` or a `Scenario` (`SCENARIOS["churn"].evolve(...)`).
        policy: one of `available_policies()`.
        seed: the run's seed: the same seed gives the same figures, on either backend.
        settings: manager settings (names in `MANAGER_SETTINGS`), such as
            `{"bounded_count": False}` or `{"ceiling": 40}`; ignored by "libp2p".
        quick: run the scenario's quick form (`Scenario.quick()`).

    Raises TypeError or ValueError naming the argument before anything runs. The run uses
    its own `FakeClock` and manager and takes a second or two of real time. Cancelled, it
    leaves nothing behind (its manager and tasks end with it).
    """
    sc = _check_scenario(scenario, quick)
    name = _check_policy(policy)
    seed = _check_seed(seed)
    chosen = check_settings(settings, sc)
    return await _run(sc, name, seed, chosen, quick)


async def _run(
    sc: Scenario, name: str, seed: int, chosen: Mapping[str, object], quick: bool
) -> Figures:
    clock = FakeClock()
    libp2p = name == "libp2p"
    if libp2p:
        manager = _tag_store(sc, clock)
    else:
        manager = _manager(sc, chosen, clock, _policy_object(name, seed))
    info = manager.get_info()
    ceiling = info.ceiling if info.ceiling is not None else _default_ceiling(sc)
    started = time.perf_counter()
    async with manager:
        try:
            async with anyio.create_task_group() as tg:
                world = World(sc, seed, clock, manager, tg, libp2p=libp2p, ceiling=ceiling)
                await world.run()
                tg.cancel_scope.cancel()
        finally:
            # The closes in flight sleep on the simulated clock: keep it moving until the
            # manager has closed. `aclose()` runs in this task, which has lived since before
            # any trim (a new task could be mistaken for one of a trim's own closes).
            with anyio.CancelScope(shield=True):
                await _close_driven(manager, clock)
    wall = time.perf_counter() - started
    return _figures(world, name, seed, quick, None if libp2p else info, ceiling, wall)


async def _close_driven(manager: ConnManager, clock: FakeClock) -> None:
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(drive_clock, clock, done)
        try:
            await manager.aclose()
        finally:
            done.set()


def _figures(
    world: World,
    policy: str,
    seed: int,
    quick: bool,
    info: asyncconnmgr.ManagerInfo | None,
    ceiling: int,
    wall: float,
) -> Figures:
    sc = world.scenario
    rec = world.recorder
    _, slots, honest, attackers, groups, _, _, _ = rec.state
    measured = rec.measured or 1.0
    minutes = measured / 60
    in_window = [t for t in world.trims if t[0] >= sc.warmup]
    bounded = None if info is None else info.ceiling is not None
    return Figures(
        scenario=sc.name,
        policy=policy,
        seed=seed,
        quick=quick,
        bounded_count=bounded,
        ceiling=None if info is None else info.ceiling,
        grace_budget=None if info is None else info.grace_budget,
        duration=sc.duration,
        low_water=sc.low_water,
        high_water=sc.high_water,
        reference_ceiling=ceiling,
        in_band=rec.in_band / measured,
        above_high=rec.above_high / measured,
        overshoot=max(rec.max_count - sc.high_water, 0),
        mean_count=rec.count_time / measured,
        max_count=rec.max_count,
        longest_above_high=rec.longest_above_high,
        longest_above_ceiling=rec.longest_above_ceiling,
        longest_unchosen_above_ceiling=rec.longest_unchosen_above_ceiling,
        longest_trim=max((t[1] for t in in_window), default=0.0),
        largest_trim=max((t[2] for t in in_window), default=0),
        trims_per_min=len(in_window) / minutes,
        closes_per_min=sum(t[2] for t in in_window) / minutes,
        ceiling_trims=sum(1 for t in in_window if t[3] == "ceiling"),
        hv_kept=rec.hv_open_time / rec.hv_online_time if rec.hv_online_time else 1.0,
        hv_mean=rec.hv_open_time / measured,
        honest_end=honest,
        honest_min=rec.honest_min if rec.honest_min is not None else honest,
        honest_groups_end=groups,
        honest_groups_min=rec.groups_min if rec.groups_min is not None else groups,
        eclipsed=rec.eclipsed,
        attacker_share_end=attackers / slots if slots else 0.0,
        attacker_share_mean=rec.attacker_time / measured,
        attacker_share_worst=rec.attacker_worst,
        attacker_conns=world.attacker_conns,
        wall_seconds=wall,
        series=tuple(rec.series),
    )


def run(
    scenario: str | Scenario = "churn",
    policy: str = "default",
    *,
    seed: int = 1,
    settings: Mapping[str, object] | None = None,
    quick: bool = False,
    backend: str = "asyncio",
) -> Figures:
    """`run_async` in an event loop of its own (`anyio.run` on `backend`, "asyncio" or
    "trio"); the same arguments and errors, checked before the loop starts. Call it from
    synchronous code, not from inside a running loop."""
    sc = _check_scenario(scenario, quick)
    name = _check_policy(policy)
    seed = _check_seed(seed)
    chosen = check_settings(settings, sc)
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")

    async def main() -> Figures:
        return await _run(sc, name, seed, chosen, quick)

    return anyio.run(main, backend=backend)


def run_matrix(
    scenarios: Iterable[str | Scenario] | None = None,
    policies: Sequence[str] | None = None,
    *,
    seed: int = 1,
    settings: Mapping[str, object] | None = None,
    quick: bool = False,
    compare_bounded: bool = True,
    backend: str = "asyncio",
) -> list[Figures]:
    """Every scenario (all of `SCENARIOS` by default) under every policy (all of
    `available_policies()` by default), each manager policy but the oracle both with the
    bounded count and with the reference behaviour (`bounded_count=False`) when
    `compare_bounded` (and `settings` does not fix `bounded_count`). Same seed for every
    run; synchronous (each run in its own loop, see `run`). Raises like `run`."""
    chosen_scenarios = list(SCENARIOS) if scenarios is None else list(scenarios)
    chosen_policies = list(available_policies() if policies is None else policies)
    base = dict(settings or {})
    results: list[Figures] = []
    for scenario in chosen_scenarios:
        for policy in chosen_policies:
            variants: list[dict[str, object]] = [base]
            if policy not in _ONE_VARIANT and compare_bounded and "bounded_count" not in base:
                variants = [{**base, "bounded_count": True}, {**base, "bounded_count": False}]
            for variant in variants:
                if variant.get("bounded_count") is False:
                    variant = {
                        k: v for k, v in variant.items() if k not in ("ceiling", "grace_budget")
                    }
                results.append(
                    run(
                        scenario,
                        policy,
                        seed=seed,
                        settings=variant,
                        quick=quick,
                        backend=backend,
                    )
                )
    return results
