"""A churn-and-attack simulator that measures how well a connection manager trims.

It drives the real `ConnManager` (or py-libp2p's pruner rules, re-implemented) with a
simulated host on `asyncconnmgr.testing.FakeClock`: honest peers that connect, talk (streams,
tags, decaying-tag bumps), leave and come back, and attackers that flood, mimic honest
peers, or sit on idle inbound slots. Closes take simulated time. A run is deterministic for
its seed, on asyncio and trio alike, and takes a second or two of real time.

From the command line::

    python -m asyncconnmgr.sim                       # every scenario x every policy
    python -m asyncconnmgr.sim --quick               # the same, short (for CI)
    python -m asyncconnmgr.sim --scenario flood --policy default --set ceiling=40
    python -m asyncconnmgr.sim --json | --markdown | --plot trims.png

From Python::

    from asyncconnmgr import sim

    figures = sim.run("flood", "default", seed=1, settings={"bounded_count": False})
    print(figures.attacker_share_worst, figures.above_high)
    print(sim.format_table(sim.run_matrix(quick=True)))

    # inside a running loop (asyncio or trio), e.g. an anyio test:
    figures = await sim.run_async(sim.SCENARIOS["churn"].evolve(grace_period=10.0))

Scenarios (`SCENARIOS`; parameters in `Scenario`):

- "churn": 100 peers, low 20 / high 30, grace 3 s, silence 1 s; peers go offline for
  5-25 s and redial; 3 protected, mesh peers (a stream and decaying-tag bumps), dht peers
  (a static tag, short request streams), idle peers; spread over 60 netgroups.
- "flood": churn, plus waves of 300 idle inbound attackers (10x high water) from 2 /16s,
  each wave within one silence period.
- "mimic": churn, plus 600 patient attackers from 4 /16s that behave like honest peers,
  arriving steadily.
- "slot-hijack": a restart; idle inbound attackers from 3 /16s connect first, hold their
  slots, and redial at once when closed (Wang et al., "Eclipse Attacks on Ethereum's
  Peer-to-Peer Network", arXiv 2601.16560).

Policies (`available_policies()`): "default" (`DefaultPolicy`), "diversity"
(`DiversityPolicy`, where this version of the package has it), "libp2p" (py-libp2p
0.8.1's pruner: see `asyncconnmgr.sim._libp2p` for its rules and where the simulation
differs) and "oracle" (a yardstick that knows the attackers and closes them first: the best
any victim order could do). Each run reports `Figures`.
"""

from __future__ import annotations

from ._libp2p import LIBP2P_DEBOUNCE as LIBP2P_DEBOUNCE
from ._libp2p import LIBP2P_MAX_PRUNE_BATCH as LIBP2P_MAX_PRUNE_BATCH
from ._report import COLUMNS as COLUMNS
from ._report import Figures as Figures
from ._report import format_table as format_table
from ._report import plot as plot
from ._report import to_json as to_json
from ._run import BOUNDED_COUNT_SETTINGS as BOUNDED_COUNT_SETTINGS
from ._run import MANAGER_SETTINGS as MANAGER_SETTINGS
from ._run import available_policies as available_policies
from ._run import check_settings as check_settings
from ._run import run as run
from ._run import run_async as run_async
from ._run import run_matrix as run_matrix
from ._scenarios import ATTACKER_KINDS as ATTACKER_KINDS
from ._scenarios import SCENARIOS as SCENARIOS
from ._scenarios import Scenario as Scenario
from ._scenarios import scenario_fields as scenario_fields

__all__ = [
    "ATTACKER_KINDS",
    "BOUNDED_COUNT_SETTINGS",
    "COLUMNS",
    "LIBP2P_DEBOUNCE",
    "LIBP2P_MAX_PRUNE_BATCH",
    "MANAGER_SETTINGS",
    "SCENARIOS",
    "Figures",
    "Scenario",
    "available_policies",
    "check_settings",
    "format_table",
    "plot",
    "run",
    "run_async",
    "run_matrix",
    "scenario_fields",
    "to_json",
]
