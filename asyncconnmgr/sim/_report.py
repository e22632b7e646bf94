"""The figures of one run, and the table, JSON and picture made of many."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = ["COLUMNS", "Figures", "format_table", "plot", "to_json"]


@attrs.frozen(kw_only=True)
class Figures:
    """What one run of one scenario under one policy measured.

    Every figure covers the measured window, from the scenario's `warmup` to its end. "The
    count" is the number of the host's connections to unprotected peers, those being closed
    included (they still hold their resources); a "slot" is an open connection to an
    unprotected peer that is not being closed.

    Settings: `scenario`, `policy`, `seed`, `quick`; `bounded_count`, `ceiling` and
    `grace_budget` as the manager had them (None for the "libp2p" baseline, which has no
    bounded count).

    The count: `in_band` is the share of the time it was within [low, high water];
    `above_high` the share above high water; `overshoot` the most it ever exceeded high
    water by (0 if never); `mean_count` and `max_count`; `longest_above_high` and
    `longest_above_ceiling` the longest stretches (seconds) above high water and above
    `reference_ceiling` (the manager's ceiling, or, where it has none, the one the bounded
    count would use by default), against `longest_trim`, the longest trim (seconds from
    its start until its last close ended). `longest_unchosen_above_ceiling` is the longest
    stretch during which the connections no trim had chosen yet (the manager's own count,
    protected excluded; for "libp2p", the slots) exceeded that ceiling: how long a crossing
    went unanswered.

    Work: `trims_per_min` (every trim that ran, empty ones included; for "libp2p", every
    prune cycle that found the count above high water),
    `closes_per_min` (connections it closed), `largest_trim` (the most connections one
    trim closed) and `ceiling_trims` (trims the ceiling started).

    Honest peers: `hv_kept` is the share of the high-value (mesh) honest peers that wanted
    to be connected and were (time-weighted; 1.0 if none wanted to), `hv_mean` how many
    were connected, on average;
    `honest_end` and `honest_min` the honest unprotected peers connected at the end and at
    the fewest; `honest_groups_end` and `honest_groups_min` the distinct netgroups (/16 or
    IPv6 /32) they came from; `eclipsed` is true if at some moment not one honest
    unprotected peer was connected.

    Attackers: `attacker_share_end`, `attacker_share_mean` and `attacker_share_worst` are
    their share of the slots at the end, on average over the measured time (weighted by how
    long each state lasted) and at worst; `attacker_conns` how many connections they opened.
    The share at one moment swings with where it falls between two trims; the mean does not.

    `wall_seconds` is the run's real duration (it takes no part in comparisons).
    """

    scenario: str
    policy: str
    seed: int
    quick: bool
    bounded_count: bool | None
    ceiling: int | None
    grace_budget: int | None
    duration: float
    low_water: int
    high_water: int
    reference_ceiling: int
    in_band: float
    above_high: float
    overshoot: int
    mean_count: float
    max_count: int
    longest_above_high: float
    longest_above_ceiling: float
    longest_unchosen_above_ceiling: float
    longest_trim: float
    largest_trim: int
    trims_per_min: float
    closes_per_min: float
    ceiling_trims: int
    hv_kept: float
    hv_mean: float
    honest_end: int
    honest_min: int
    honest_groups_end: int
    honest_groups_min: int
    eclipsed: bool
    attacker_share_end: float
    attacker_share_mean: float
    attacker_share_worst: float
    attacker_conns: int
    wall_seconds: float = attrs.field(default=0.0, eq=False)
    series: tuple[tuple[float, int, int, int, int], ...] = attrs.field(
        default=(), eq=False, repr=False
    )

    @property
    def variant(self) -> str:
        """The policy with its bounded-count setting, as the table labels a row."""
        if self.bounded_count is None:
            return self.policy
        return f"{self.policy} bounded" if self.bounded_count else f"{self.policy} reference"

    def as_dict(self, *, series: bool = False) -> dict[str, Any]:
        """The figures as plain JSON-ready values; `series` adds the per-second samples
        (time, count, honest peers, attackers, honest netgroups)."""
        data = attrs.asdict(self, filter=lambda a, _: a.name != "series")
        if series:
            data["series"] = [list(row) for row in self.series]
        return data


#: The table's columns: (heading, figure name, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("in band", "in_band", "pct"),
    (">high", "above_high", "pct"),
    ("overshoot", "overshoot", "int"),
    ("mean", "mean_count", "f1"),
    (">high max s", "longest_above_high", "f1"),
    (">ceil max s", "longest_above_ceiling", "f1"),
    ("unchosen>ceil s", "longest_unchosen_above_ceiling", "f1"),
    ("trim max s", "longest_trim", "f1"),
    ("trims/min", "trims_per_min", "f1"),
    ("closes/min", "closes_per_min", "f1"),
    ("hv kept", "hv_kept", "pct"),
    ("atk end", "attacker_share_end", "pct"),
    ("atk mean", "attacker_share_mean", "pct"),
    ("atk worst", "attacker_share_worst", "pct"),
    ("/16s end", "honest_groups_end", "int"),
    ("/16s min", "honest_groups_min", "int"),
    ("honest min", "honest_min", "int"),
    ("eclipse", "eclipsed", "bool"),
)


def _cell(value: object, form: str) -> str:
    if form == "pct":
        assert isinstance(value, float)
        return f"{100 * value:.0f}%"
    if form == "f1":
        assert isinstance(value, float)
        return f"{value:.1f}"
    if form == "bool":
        return "YES" if value else "no"
    return str(value)


def format_table(figures: Iterable[Figures], *, markdown: bool = False) -> str:
    """A table of the runs, one row per scenario and policy variant: aligned text, or a
    Markdown table (`markdown=True`) ready for a README."""
    rows = list(figures)
    headings = ["scenario", "policy", *(heading for heading, _, _ in COLUMNS)]
    body = [
        [
            f.scenario,
            f.variant,
            *(_cell(getattr(f, name), form) for _, name, form in COLUMNS),
        ]
        for f in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(headings) + " |"]
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * len(COLUMNS)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [headings, *body]) for i in range(len(headings))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headings), line(["-" * w for w in widths]), *map(line, body)])


def to_json(figures: Iterable[Figures], *, series: bool = False, **meta: object) -> str:
    """The runs as a JSON document: `{"meta": {...}, "runs": [figures, ...]}`."""
    runs = [f.as_dict(series=series) for f in figures]
    return json.dumps({"meta": meta, "runs": runs}, indent=2, sort_keys=True)


def plot(figures: Sequence[Figures], path: str) -> None:
    """Writes a PNG to `path`: for each scenario (a column), the count, the honest peers
    and the attackers' share of the slots over time, one line per policy variant.

    Needs matplotlib (drawn with its Agg backend, no display); raises RuntimeError saying
    how to install it if it is missing, ValueError if `figures` is empty. A cancelled call
    may leave a partly written file.
    """
    if not figures:
        raise ValueError("figures must hold at least one run to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib"
        ) from exc
    scenarios = list(dict.fromkeys(f.scenario for f in figures))
    fig, axes = plt.subplots(
        3, len(scenarios), figsize=(4.2 * len(scenarios), 8.5), squeeze=False, sharex="col"
    )
    for col, name in enumerate(scenarios):
        runs = [f for f in figures if f.scenario == name]
        count_ax, honest_ax, share_ax = axes[0][col], axes[1][col], axes[2][col]
        first = runs[0]
        count_ax.set_title(name)
        count_ax.axhspan(first.low_water, first.high_water, color="0.9", zorder=0)
        for run in runs:
            times = [row[0] for row in run.series]
            count_ax.plot(times, [row[1] for row in run.series], lw=0.9, label=run.variant)
            honest_ax.plot(times, [row[2] for row in run.series], lw=0.9, label=run.variant)
            shares = [row[3] / (row[2] + row[3]) if row[2] + row[3] else 0.0 for row in run.series]
            share_ax.plot(times, shares, lw=0.9, label=run.variant)
        share_ax.set_ylim(-0.02, 1.02)
        share_ax.set_xlabel("simulated seconds")
        if col == 0:
            count_ax.set_ylabel("connections (unprotected)")
            honest_ax.set_ylabel("honest peers connected")
            share_ax.set_ylabel("attackers' share of slots")
            count_ax.legend(fontsize="x-small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
