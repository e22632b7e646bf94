"""A picture of what the manager does: a simulated host through churn and an inbound flood.

Run it with `python examples/dashboard.py [--out dashboard.png] [--trio]`; it needs
matplotlib (`pip install 'asyncconnmgr[plot]'`) and takes a few seconds.

The host runs four simulated minutes on a `FakeClock` (so the run is the same every time
and takes seconds, not minutes). Peers come and go; the host tags the ones it cares about
(DHT routing table, bitswap partners), protects its relays and marks a few misbehaving peers
down. Some transports are unreliable: a close fails once, or hangs until `close_timeout`
(and is aborted if the connection can be aborted). At 100 s an inbound flood of untagged
peers begins and lasts 30 s; at 200 s the host asks for a trim itself.

The PNG shows the connection count against the low/high band and the ceiling, every trim
with what became of the connections it chose, and the distribution of peer values before,
during and after the flood.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import random
from pathlib import Path

import anyio
import attrs

from asyncconnmgr import OUTCOMES, ConnManager, Direction, TrimResult
from asyncconnmgr.abc import Notifiee
from asyncconnmgr.metrics import PEER_VALUE_BUCKETS
from asyncconnmgr.testing import FakeClock, settle

LOW_WATER, HIGH_WATER = 60, 80
GRACE_PERIOD = 10.0
CLOSE_TIMEOUT = 2.0
STEP = 0.1  # seconds of simulated time between two samples
DURATION = 240.0
FLOOD = (100.0, 130.0)  # when the inbound flood starts and ends
FLOOD_RATE = 12.0  # new inbound connections a second during the flood
CHURN_RATE = 1.5  # new connections a second from ordinary peers
MEAN_LIFETIME = 60.0  # how long an ordinary peer stays, on average (seconds)
EXPLICIT_TRIM_AT = 200.0
SNAPSHOTS = {"before the flood": 95.0, "during the flood": 125.0, "at the end": DURATION}

COLOURS = {
    "closed": "#4c9a2a",
    "failed": "#d62728",
    "timed_out": "#ff7f0e",
    "aborted": "#9467bd",
    "spared": "#17becf",
    "not_started": "#7f7f7f",
}
MARKERS = {"background": "v", "ceiling": "D", "explicit": "o"}


class SimConn:
    """A connection of the simulated host (see `asyncconnmgr.abc.Conn`).

    `behaviour` says how its first close goes: "ok", "fail" (raises), "hang" (never
    returns), or "hang-abortable" (never returns, but `abort()` drops it). A second close
    always works.
    """

    def __init__(
        self, host: SimHost, peer: str, direction: Direction, streams: int, behaviour: str
    ) -> None:
        self.host = host
        self.remote_peer = peer
        self.direction = direction
        self.num_streams = streams
        self.remote_addr = f"/ip4/127.0.0.1/tcp/{4000 + len(host.conns)}"
        self.behaviour = behaviour
        self.close_calls = 0
        self.open = True

    async def close(self) -> None:
        self.close_calls += 1
        clock = self.host.clock
        if self.close_calls == 1:
            if self.behaviour == "fail":
                raise OSError("connection reset by peer")
            if self.behaviour.startswith("hang"):
                await anyio.sleep_forever()
        await clock.sleep_until(clock.now() + self.host.rng.uniform(0.02, 0.4))
        self.host.drop(self)

    def abort(self) -> None:
        if self.behaviour != "hang-abortable":
            raise OSError("this transport cannot be aborted")
        self.host.drop(self)


@attrs.define
class Sample:
    time: float
    conns: int
    closing: int


@attrs.define(eq=False)
class SimHost:
    """Opens and drops connections and reports both to the manager, like a libp2p swarm."""

    manager: ConnManager
    clock: FakeClock
    rng: random.Random
    notifiee: Notifiee = attrs.field(init=False)
    conns: set[SimConn] = attrs.field(factory=set)
    leaving: list[tuple[float, SimConn]] = attrs.field(factory=list)
    next_id: int = 0

    def __attrs_post_init__(self) -> None:
        self.notifiee = self.manager.notifee()

    def connect(self, kind: str) -> None:
        """A new connection from a peer of `kind`: "ordinary", "relay" or "flood"."""
        rng = self.rng
        self.next_id += 1
        peer = f"{kind}-{self.next_id}"
        behaviour = rng.choices(["ok", "fail", "hang", "hang-abortable"], weights=[88, 5, 3, 4])[0]
        if kind == "flood":
            conn = SimConn(self, peer, Direction.INBOUND, 0, behaviour)
        else:
            direction = Direction.OUTBOUND if rng.random() < 0.6 else Direction.INBOUND
            conn = SimConn(self, peer, direction, rng.randint(0, 3), behaviour)
            self.leaving.append((self.clock.now() + rng.expovariate(1 / MEAN_LIFETIME), conn))
            self.tag(peer, kind)
        self.conns.add(conn)
        self.notifiee.connected(conn)

    def tag(self, peer: str, kind: str) -> None:
        manager, rng = self.manager, self.rng
        if kind == "relay":
            manager.protect(peer, "circuit-relay")
            manager.tag_peer(peer, "relay", 50)
            return
        roll = rng.random()
        if roll < 0.05:
            manager.tag_peer(peer, "misbehaved", -20)
        elif roll < 0.5:
            manager.tag_peer(peer, "dht", 5)
            if rng.random() < 0.4:
                manager.tag_peer(peer, "bitswap", rng.randint(5, 30))

    def drop(self, conn: SimConn) -> None:
        if conn.open:
            conn.open = False
            self.conns.discard(conn)
            self.notifiee.disconnected(conn)

    def leave_due(self) -> None:
        """Ordinary peers whose time is up hang up by themselves."""
        now = self.clock.now()
        due = [conn for at, conn in self.leaving if at <= now]
        self.leaving = [(at, conn) for at, conn in self.leaving if at > now]
        for conn in due:
            self.drop(conn)


@attrs.define
class Run:
    samples: list[Sample]
    trims: list[TrimResult]
    values: dict[str, list[int]]
    ceiling: int


async def simulate(seed: int = 7) -> Run:
    clock = FakeClock()
    rng = random.Random(seed)
    trims: list[TrimResult] = []
    samples: list[Sample] = []
    values: dict[str, list[int]] = {}
    async with ConnManager(
        low_water=LOW_WATER,
        high_water=HIGH_WATER,
        grace_period=GRACE_PERIOD,
        silence_period=5.0,
        close_timeout=CLOSE_TIMEOUT,
        clock=clock,
    ) as manager:
        manager.add_trim_listener(trims.append)
        host = SimHost(manager, clock, rng)
        for _ in range(3):
            host.connect("relay")
        for _ in range(LOW_WATER):
            host.connect("ordinary")

        def arrivals(rate: float, kind: str) -> None:
            for _ in range(_poisson(rng, rate * STEP)):
                host.connect(kind)

        steps = round(DURATION / STEP)
        snapshots = {round(at / STEP): name for name, at in SNAPSHOTS.items()}
        explicit_step = round(EXPLICIT_TRIM_AT / STEP)
        trim_now = anyio.Event()

        async def maintenance() -> None:
            """The host's own upkeep: it asks for a trim when told to."""
            await trim_now.wait()
            await manager.trim_open_conns()

        async with anyio.create_task_group() as tg:
            tg.start_soon(maintenance)
            for step in range(1, steps + 1):
                clock.advance(STEP)
                now = clock.now()
                host.leave_due()
                arrivals(CHURN_RATE, "ordinary")
                if FLOOD[0] <= now < FLOOD[1]:
                    arrivals(FLOOD_RATE, "flood")
                if step == explicit_step:
                    trim_now.set()
                await manager.flush()
                await settle()
                info = manager.get_info()
                samples.append(Sample(now, info.conn_count, info.closing_count))
                if step in snapshots:
                    values[snapshots[step]] = manager.peer_values()
            ceiling = manager.get_info().ceiling

        async def keep_time() -> None:
            # A close still hanging at the end is cut off at its timeout, on this clock.
            while True:
                await settle()
                clock.advance(STEP)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_time)
            await manager.aclose()
            tg.cancel_scope.cancel()
    assert ceiling is not None
    return Run(samples, trims, values, ceiling)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth's method; the means here are small)."""
    limit, count, product = pow(2.718281828459045, -mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def value_ranges() -> tuple[list[str], list[tuple[float, float]]]:
    """The buckets of `PEER_VALUE_BUCKETS` as ranges of integer values, with their labels."""
    first = PEER_VALUE_BUCKETS[0]
    labels, ranges = [f"<= {first}"], [(-math.inf, float(first))]
    for previous, bound in itertools.pairwise(PEER_VALUE_BUCKETS):
        low = previous + 1
        labels.append(str(bound) if low == bound else f"{low}-{bound}")
        ranges.append((low, bound))
    labels.append(f"> {PEER_VALUE_BUCKETS[-1]}")
    ranges.append((PEER_VALUE_BUCKETS[-1] + 1, math.inf))
    return labels, ranges


def draw(run: Run, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(13, 9.5), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[2.2, 1.3, 1.6], width_ratios=[1.6, 1])
    count_ax = fig.add_subplot(grid[0, :])
    trims_ax = fig.add_subplot(grid[1, :], sharex=count_ax)
    values_ax = fig.add_subplot(grid[2, 0])
    totals_ax = fig.add_subplot(grid[2, 1])
    fig.suptitle("asyncconnmgr: a simulated host through churn and an inbound flood", size=14)

    times = [s.time for s in run.samples]
    for ax in (count_ax, trims_ax):
        ax.axvspan(*FLOOD, color="#fde0dd", zorder=0)
        ax.axvline(EXPLICIT_TRIM_AT, color="#555555", lw=0.8, ls=":", zorder=1)
        ax.grid(axis="y", alpha=0.3)

    count_ax.axhspan(LOW_WATER, HIGH_WATER, color="#c6dbef", alpha=0.7, zorder=0)
    count_ax.axhline(run.ceiling, color="#08519c", lw=1, ls="--")
    count_ax.plot(times, [s.conns for s in run.samples], color="#08306b", lw=1.3)
    count_ax.fill_between(
        times, 0, [s.closing for s in run.samples], color="#ff7f0e", alpha=0.6, lw=0
    )
    peak = max(s.conns for s in run.samples)
    count_ax.set_ylim(0, max(peak, run.ceiling) * 1.15)
    count_ax.set_ylabel("connections")
    count_ax.set_title("Open connections against the water marks", loc="left")
    count_ax.text(sum(FLOOD) / 2, count_ax.get_ylim()[1] * 0.93, "inbound flood", ha="center")
    count_ax.text(EXPLICIT_TRIM_AT + 1, count_ax.get_ylim()[1] * 0.93, "explicit trim")
    count_ax.legend(
        handles=[
            Line2D([], [], color="#08306b", lw=1.3, label="open (not being closed)"),
            Patch(color="#ff7f0e", alpha=0.6, label="being closed by a trim"),
            Patch(color="#c6dbef", label=f"low to high water ({LOW_WATER} to {HIGH_WATER})"),
            Line2D([], [], color="#08519c", ls="--", label=f"ceiling ({run.ceiling})"),
        ],
        loc="upper left",
        ncols=2,
        framealpha=0.9,
    )

    # Each trim: a stacked bar of what became of the connections it chose, at its start.
    width = 1.6
    bottoms = [0.0] * len(run.trims)
    starts = [t.started_at or 0.0 for t in run.trims]
    for outcome in OUTCOMES:
        heights = [t.outcomes.get(outcome, 0) for t in run.trims]
        if any(heights):
            trims_ax.bar(
                starts,
                heights,
                width,
                bottom=bottoms,
                color=COLOURS[outcome],
                label=outcome.replace("_", " "),
                align="edge",
            )
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    top = max(bottoms, default=1.0) * 1.35 or 1.0
    trims_ax.set_ylim(0, top)
    # What started each trim, as a marker just above its bar.
    for trigger, marker in MARKERS.items():
        mine = [
            (s, b)
            for s, b, t in zip(starts, bottoms, run.trims, strict=True)
            if t.trigger == trigger
        ]
        trims_ax.scatter(
            [s + width / 2 for s, _ in mine],
            [b + top * 0.05 for _, b in mine],
            marker=marker,
            s=24,
            color="#333333",
            label=f"{trigger} trim",
            zorder=3,
        )
    trims_ax.set_ylabel("connections chosen")
    trims_ax.set_xlabel("simulated time (s)")
    trims_ax.set_xlim(0, DURATION + 3)
    trims_ax.set_title("Every trim, and what became of the connections it chose", loc="left")
    trims_ax.legend(loc="upper right", ncols=3, framealpha=0.9, fontsize=9)

    # The distribution of peer values at three moments, in the buckets of the
    # `_peer_tag_value` metric.
    labels, ranges = value_ranges()
    names = list(run.values)
    # Up to the highest bucket that holds a peer.
    used = max(
        at
        for at, (lo, hi) in enumerate(ranges)
        for vs in run.values.values()
        for v in vs
        if lo <= v <= hi
    )
    labels, ranges = labels[: used + 1], ranges[: used + 1]
    slot = 0.8 / len(names)
    colours = ["#6baed6", "#fb6a4a", "#74c476"]
    for at, name in enumerate(names):
        counts = [sum(1 for v in run.values[name] if lo <= v <= hi) for lo, hi in ranges]
        values_ax.bar(
            [i - 0.4 + slot * (at + 0.5) for i in range(len(ranges))],
            counts,
            slot,
            color=colours[at % len(colours)],
            label=f"{name} ({len(run.values[name])} peers)",
        )
    values_ax.set_xticks(range(len(labels)), labels, fontsize=9)
    values_ax.set_yscale("log")
    values_ax.set_xlabel("peer value (sum of tags)")
    values_ax.set_ylabel("peers (log scale)")
    values_ax.set_title("Peer values", loc="left")
    values_ax.legend(fontsize=9)
    values_ax.grid(axis="y", alpha=0.3)

    # Totals, as the metrics would count them.
    totals_ax.axis("off")
    by_trigger = {trigger: sum(1 for t in run.trims if t.trigger == trigger) for trigger in MARKERS}
    by_outcome = {o: sum(t.outcomes.get(o, 0) for t in run.trims) for o in OUTCOMES}
    lines = ["trims"]
    lines += [f"  {name:<12}{count:>6}" for name, count in by_trigger.items()]
    lines += ["", "connections chosen"]
    lines += [f"  {name.replace('_', ' '):<12}{count:>6}" for name, count in by_outcome.items()]
    longest = max(t.duration or 0.0 for t in run.trims)
    lines += ["", f"longest trim {longest:>6.2f} s", f"close_timeout {CLOSE_TIMEOUT:>5.1f} s"]
    totals_ax.text(0.02, 0.98, "\n".join(lines), family="monospace", va="top", size=10.5)
    totals_ax.set_title("Totals", loc="left")

    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"), help="the PNG to write")
    parser.add_argument("--trio", action="store_true", help="run on trio instead of asyncio")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.exit(2, "this example needs matplotlib: pip install 'asyncconnmgr[plot]'\n")
    # The simulated transports fail on purpose; the manager's warnings about them are noise.
    logging.getLogger("asyncconnmgr").setLevel(logging.ERROR)
    result = anyio.run(simulate, backend="trio" if args.trio else "asyncio")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(result, args.out)
    closed = sum(t.outcomes.get("closed", 0) for t in result.trims)
    print(f"{len(result.trims)} trims, {closed} connections closed; wrote {args.out}")


if __name__ == "__main__":
    main()
