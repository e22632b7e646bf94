"""The simulator: deterministic, every scenario runs, its figures hold together, its CLI."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import pytest

from asyncconnmgr import ConnManager, sim
from asyncconnmgr.sim.__main__ import main, parse_assignment
from asyncconnmgr.sim._run import AttackersFirst
from asyncconnmgr.sim._world import ATTACKER_PREFIX
from asyncconnmgr.testing import FakeClock, FakeConn

from .util import task_ids

#: Short forms of the scenarios (a few simulated minutes in tenths of a second of real time).
SHORT = {
    "churn": sim.SCENARIOS["churn"].evolve(duration=40.0, warmup=10.0),
    "flood": sim.SCENARIOS["flood"].evolve(
        duration=40.0,
        warmup=10.0,
        attacker_start=20.0,
        attacker_waves=2,
        attacker_wave_every=10.0,
    ),
    "mimic": sim.SCENARIOS["mimic"].evolve(
        duration=40.0, warmup=10.0, attacker_start=10.0, attacker_spread=20.0
    ),
    "slot-hijack": sim.SCENARIOS["slot-hijack"].evolve(duration=40.0, warmup=10.0),
}


def test_short_forms_cover_every_scenario() -> None:
    assert set(SHORT) == set(sim.SCENARIOS)


@pytest.mark.anyio
async def test_same_seed_same_figures() -> None:
    first = await sim.run_async(SHORT["flood"], "default", seed=7)
    second = await sim.run_async(SHORT["flood"], "default", seed=7)
    assert first == second
    assert first.series == second.series
    assert first.series  # the samples the picture is drawn from


def test_both_backends_give_the_same_figures() -> None:
    on_asyncio = sim.run(SHORT["mimic"], "default", seed=3, backend="asyncio")
    on_trio = sim.run(SHORT["mimic"], "default", seed=3, backend="trio")
    assert on_asyncio == on_trio
    assert on_asyncio.series == on_trio.series


@pytest.mark.anyio
async def test_different_seeds_differ() -> None:
    one = await sim.run_async(SHORT["churn"], "default", seed=1)
    two = await sim.run_async(SHORT["churn"], "default", seed=2)
    assert one != two
    assert one.series != two.series


def _check_ranges(f: sim.Figures) -> None:
    for share in (
        f.in_band,
        f.above_high,
        f.hv_kept,
        f.attacker_share_end,
        f.attacker_share_worst,
    ):
        assert 0.0 <= share <= 1.0
    assert f.in_band + f.above_high <= 1.0 + 1e-9
    assert f.overshoot == max(f.max_count - f.high_water, 0)
    assert 0 <= f.mean_count <= f.max_count
    assert f.above_high == 0 or f.longest_above_high > 0
    assert 0 <= f.longest_above_high <= f.duration
    assert 0 <= f.longest_unchosen_above_ceiling <= f.duration
    assert f.longest_above_ceiling <= f.longest_above_high + 1e-9
    assert f.trims_per_min >= 0
    assert f.closes_per_min >= 0
    assert f.largest_trim >= 0
    assert f.longest_trim >= 0
    assert f.closes_per_min == 0 or f.largest_trim > 0
    assert 0 <= f.honest_min <= f.honest_end
    assert 0 <= f.honest_groups_min <= f.honest_groups_end <= f.honest_end
    assert f.eclipsed == (f.honest_min == 0)
    assert f.attacker_share_worst >= f.attacker_share_end
    assert f.attacker_share_worst >= f.attacker_share_mean >= 0
    assert f.hv_mean >= 0


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(SHORT))
@pytest.mark.parametrize("policy", sim.available_policies())
async def test_each_scenario_runs_with_figures_in_range(name: str, policy: str) -> None:
    f = await sim.run_async(SHORT[name], policy)
    assert (f.scenario, f.policy) == (name, policy)
    _check_ranges(f)
    if policy == "libp2p":
        assert (f.bounded_count, f.ceiling, f.grace_budget) == (None, None, None)
        assert f.largest_trim <= sim.LIBP2P_MAX_PRUNE_BATCH
        # It never closes a connection with a stream: the mesh peers always have one.
        assert f.hv_kept == 1.0
    else:
        assert f.bounded_count is True
        assert f.ceiling is not None
    if name == "churn":
        assert f.attacker_conns == 0
        assert f.attacker_share_worst == f.attacker_share_mean == 0.0
    else:
        assert f.attacker_conns > 0


@pytest.mark.anyio
async def test_the_oracle_closes_every_attacker_first() -> None:
    # The attackers are the most valuable peers here: the default order would keep them.
    clock = FakeClock()
    async with ConnManager(
        low_water=2, high_water=3, grace_period=0, clock=clock, policy=AttackersFirst()
    ) as manager:
        peers = ["h0", f"{ATTACKER_PREFIX}0", "h1", f"{ATTACKER_PREFIX}1"]
        for peer in peers:
            manager.notifee().connected(FakeConn(peer))
            if peer.startswith(ATTACKER_PREFIX):
                manager.tag_peer(peer, "useful", 100)
        await manager.flush()
        result = await manager.trim_open_conns()
    # Among the attackers, the default order: the youngest first.
    assert [victim.peer for victim in result.victims] == [
        f"{ATTACKER_PREFIX}1",
        f"{ATTACKER_PREFIX}0",
    ]


@pytest.mark.anyio
async def test_the_mean_share_follows_the_whole_run() -> None:
    # Patient attackers that look honest take the default order's slots; the oracle shows
    # what a victim order could keep them to, and the mean says it over the whole run.
    default = await sim.run_async(SHORT["mimic"], "default")
    oracle = await sim.run_async(SHORT["mimic"], "oracle")
    assert (oracle.bounded_count, oracle.policy) == (True, "oracle")
    assert oracle.attacker_share_mean < default.attacker_share_mean / 2
    assert oracle.attacker_share_worst <= default.attacker_share_worst


@pytest.mark.anyio
async def test_a_flood_really_brings_attackers() -> None:
    scenario = SHORT["flood"]
    f = await sim.run_async(scenario, "default", settings={"bounded_count": False})
    assert f.attacker_conns == scenario.attackers * scenario.attacker_waves
    # The reference lets every flooding peer sit out its grace period: they hold most slots.
    assert f.attacker_share_worst > 0.5
    assert f.max_count > scenario.attackers


@pytest.mark.anyio
async def test_the_bounded_count_answers_a_flood_sooner() -> None:
    reference = await sim.run_async(SHORT["flood"], "default", settings={"bounded_count": False})
    bounded = await sim.run_async(SHORT["flood"], "default", settings={"bounded_count": True})
    assert bounded.ceiling_trims > 0
    assert reference.ceiling_trims == 0
    assert bounded.longest_unchosen_above_ceiling < reference.longest_unchosen_above_ceiling
    assert bounded.mean_count < reference.mean_count


@pytest.mark.anyio
async def test_settings_reach_the_manager() -> None:
    f = await sim.run_async(SHORT["churn"], "default", settings={"ceiling": 40, "grace_budget": 4})
    assert (f.bounded_count, f.ceiling, f.grace_budget) == (True, 40, 4)
    assert f.reference_ceiling == 40
    default = await sim.run_async(SHORT["churn"], "default")
    off = await sim.run_async(SHORT["churn"], "default", settings={"bounded_count": False})
    assert (off.bounded_count, off.ceiling, off.grace_budget) == (False, None, None)
    # Without a ceiling, the stretches are measured against the default one.
    assert off.reference_ceiling == default.ceiling
    assert off != default


@pytest.mark.anyio
async def test_a_cancelled_run_leaves_no_task_behind() -> None:
    before = task_ids()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sim.run_async, sim.SCENARIOS["churn"], "default")
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert task_ids() == before


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _cli(
        capsys,
        "--quick",
        "--scenario",
        "churn",
        "--policy",
        "default,libp2p",
        "--set",
        "duration=30",
        "--json",
    )
    assert status == 0
    document: dict[str, Any] = json.loads(out)
    runs = document["runs"]
    assert [(r["policy"], r["bounded_count"]) for r in runs] == [
        ("default", True),
        ("default", False),
        ("libp2p", None),
    ]
    assert all(r["duration"] == 30.0 for r in runs)
    assert document["meta"]["scenario_changes"]["duration"] == 30.0
    assert "series" not in runs[0]


def test_cli_markdown_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "trims.png"
    status, out, _ = _cli(
        capsys,
        "--scenario",
        "flood",
        "--policy",
        "default",
        "--set",
        "bounded_count=false",
        "--set",
        "duration=30",
        "--set",
        "attacker_start=15",
        "--markdown",
        "--plot",
        str(picture),
    )
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("| scenario | policy |")
    assert lines[2].startswith("| flood | default reference |")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    figures = sim.run(SHORT["churn"].evolve(duration=15.0), "libp2p")
    with pytest.raises(ValueError, match="figures"):
        sim.plot([], str(tmp_path / "empty.png"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match="matplotlib"):
        sim.plot([figures], str(tmp_path / "trims.png"))
    status, _, err = _cli(
        capsys,
        "--scenario",
        "churn",
        "--policy",
        "libp2p",
        "--set",
        "duration=25",
        "--plot",
        str(tmp_path / "trims.png"),
    )
    assert status == 2
    assert "matplotlib" in err
    assert not (tmp_path / "trims.png").exists()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--set", "nope=3"], "nope"),
        (["--set", "ceiling"], "key=value"),
        (["--set", "ceiling=10"], "ceiling"),
        (["--set", "duration=-5"], "duration"),
        (["--set", "close_delay=a,b"], "close_delay"),
        (["--scenario", "nope"], "nope"),
        (["--policy", "nope"], "nope"),
    ],
)
def test_cli_bad_input_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    status, out, err = _cli(capsys, *argv)
    assert status == 2
    assert named in err
    assert out == ""


def test_parse_assignment_reads_values() -> None:
    assert parse_assignment("bounded_count=false") == ("bounded_count", False)
    assert parse_assignment("ceiling=none") == ("ceiling", None)
    assert parse_assignment("ceiling=40") == ("ceiling", 40)
    assert parse_assignment("duration=60") == ("duration", 60.0)
    assert parse_assignment("offline=5,25") == ("offline", (5.0, 25.0))


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"scenario": "nope"}, ValueError, "scenario"),
        ({"scenario": 3}, TypeError, "scenario"),
        ({"policy": "nope"}, ValueError, "policy"),
        ({"policy": None}, TypeError, "policy"),
        ({"seed": "1"}, TypeError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"quick": "yes"}, TypeError, "quick"),
        ({"settings": [("ceiling", 40)]}, TypeError, "settings"),
        ({"settings": {"nope": 1}}, ValueError, "nope"),
        ({"settings": {"ceiling": 10}}, ValueError, "ceiling"),
        ({"settings": {"ceiling": "40"}}, TypeError, "ceiling"),
        ({"settings": {"grace_budget": -1}}, ValueError, "grace_budget"),
        ({"settings": {"bounded_count": 1}}, TypeError, "bounded_count"),
        ({"backend": "curio"}, ValueError, "backend"),
    ],
)
def test_bad_arguments_raise_naming_them(
    kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        sim.run(**kwargs)


@pytest.mark.anyio
async def test_run_async_checks_its_arguments_first() -> None:
    with pytest.raises(ValueError, match="policy"):
        await sim.run_async("churn", "nope")
    with pytest.raises(TypeError, match="seed"):
        await sim.run_async("churn", seed=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "error", "named"),
    [
        ({"duration": -1.0}, ValueError, "duration"),
        ({"duration": "long"}, TypeError, "duration"),
        ({"close_delay": (2.0, 1.0)}, ValueError, "close_delay"),
        ({"close_delay": 1.0}, TypeError, "close_delay"),
        ({"attackers": 1.5}, TypeError, "attackers"),
        ({"attacker_kind": "sneaky"}, ValueError, "attacker_kind"),
        ({"mesh_share": 1.5}, ValueError, "mesh_share"),
        ({"low_water": 40}, ValueError, "low_water"),
        ({"duration": 10.0}, ValueError, "warmup"),
        ({"attackers": 10, "attacker_waves": 0}, ValueError, "attacker_waves"),
        ({"nope": 1}, ValueError, "nope"),
    ],
)
def test_bad_scenario_parameters_raise_naming_them(
    changes: dict[str, Any], error: type[Exception], named: str
) -> None:
    churn = sim.SCENARIOS["churn"]
    with pytest.raises(error, match=named):
        churn.evolve(**changes)
    assert sim.SCENARIOS["churn"] == churn
