"""The trim in flight: who still wants it, what its closes did, and its `TrimResult`.

Synchronous code with no I/O, like the table and the ledger: the manager plans a trim,
makes a `Flight` of it, runs its closes through the closer and awaits `Flight.done`; this
module keeps the book.

- Callers of `trim_open_conns()` and the background trimmer *want* the flight, each with
  its own deadline or none (`want` / `leave`). The closes' deadline (`CloseRun.deadline`) is
  the latest deadline still wanted, or none while anyone wants it without one; the last to
  leave stops the run (`CloseRun.stop`).
- The closer reports every outcome but "closed" into `outcomes`; a close that started and
  reported nothing else closed.
- `make_result()` makes the `TrimResult`, at the end or, for a caller that leaves early, of
  the progress so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._models import TrimResult, Victim, closed_victims

if TYPE_CHECKING:
    import anyio

    from ._closer import CloseRun
    from ._table import Choice, PeerTable
    from .abc import Conn

__all__ = ["Flight", "victims_of"]

#: A victim's outcome is the first of these that any of its connections had.
WORST_FIRST: Final = ("failed", "timed_out", "aborted", "spared", "not_started")


class Flight:
    """One planned trim, from its plan to its result (see the module docstring).

    `bounded` holds the deadlines of the parties that want it with one, `unbounded` how many
    want it without. `values` and `reasons` are each victim's value and
    reason when it was chosen.
    """

    __slots__ = (
        "bounded",
        "choice",
        "done",
        "outcomes",
        "previous_trim",
        "reasons",
        "result",
        "run",
        "started_at",
        "target",
        "temporary_removed",
        "trigger",
        "unbounded",
        "values",
    )

    def __init__(
        self,
        trigger: str,
        run: CloseRun,
        choice: Choice,
        target: int,
        started_at: float,
        done: anyio.Event,
        *,
        previous_trim: float | None,
        temporary_removed: int,
        reasons: tuple[object, ...],
    ) -> None:
        self.trigger = trigger
        self.run = run
        self.choice = choice
        self.target = target
        self.started_at = started_at
        self.done = done
        self.previous_trim = previous_trim
        self.temporary_removed = temporary_removed
        self.reasons = reasons
        self.values = tuple(entry.value for entry in choice.entries)
        self.result: TrimResult | None = None  # set once, when the last close has ended
        self.outcomes: dict[Conn, str] = {}
        self.unbounded = 0
        self.bounded: list[float] = []

    def want(self, deadline: float | None) -> None:
        """One more party wants the flight, until `deadline` (None: for as long as it takes)."""
        if deadline is None:
            self.unbounded += 1
        else:
            self.bounded.append(deadline)
        self._update_deadline()

    def leave(self, deadline: float | None) -> bool:
        """One wanting party leaves; True if it was the last (the run then stops)."""
        if deadline is None:
            self.unbounded -= 1
        else:
            self.bounded.remove(deadline)
        if not (self.unbounded or self.bounded):
            self.run.stop()
            return True
        self._update_deadline()
        return False

    def _update_deadline(self) -> None:
        self.run.deadline = None if self.unbounded or not self.bounded else max(self.bounded)

    def make_result(self, now: float, table: PeerTable, *, finished: bool) -> TrimResult:
        """The flight's `TrimResult` at `now`: the final one once its closes have all ended
        (`finished`), else the progress so far, for a caller that leaves early."""
        run = self.run
        choice = self.choice
        outcomes = self.outcomes
        started = run.started
        counts: dict[str, int] = {}
        for outcome in outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        # Every close that started and reported no other outcome closed; for a caller that
        # leaves early, the closes still running are neither closed nor failed yet.
        closed = started - len(outcomes) if finished else self._closed_so_far(table)
        if closed:
            counts["closed"] = closed
        if finished and started < len(choice.conns):
            counts["not_started"] = len(choice.conns) - started
        failed = counts.get("failed", 0) + counts.get("timed_out", 0)
        return TrimResult(
            closed=closed + counts.get("aborted", 0),
            failed=failed,
            cut_short=started < len(choice.conns) or not finished,
            target=max(self.target, 0),
            started_at=self.started_at,
            finished_at=now,
            victims=victims_of(choice, self.values, self.reasons, outcomes, started),
            temporary_removed=self.temporary_removed,
            trigger=self.trigger,
            outcomes=counts,
        )

    def _closed_so_far(self, table: PeerTable) -> int:
        outcomes = self.outcomes
        return sum(
            1
            for conn in self.choice.conns[: self.run.started]
            if conn not in outcomes and table.entry_of(conn) is None
        )


def victims_of(
    choice: Choice,
    values: tuple[int, ...],
    reasons: tuple[object, ...],
    outcomes: dict[Conn, str],
    started: int,
    *,
    not_started: bool = False,
) -> tuple[Victim, ...]:
    """The `Victim` of each chosen peer: the worst outcome among its connections (see
    `WORST_FIRST`), those from `started` on "not_started" (all of them if `not_started`),
    a connection with no entry in `outcomes` "closed"."""
    if not (not_started or outcomes) and started >= len(choice.conns):
        # Every chosen connection closed: the common case, and the one with many victims.
        peers = [entry.peer for entry in choice.entries]
        return closed_victims(peers, values, choice.sizes, reasons)
    victims: list[Victim] = []
    at = 0
    for entry, value, size, reason in zip(
        choice.entries, values, choice.sizes, reasons, strict=True
    ):
        if not_started or at >= started:
            outcome = "not_started"
        elif outcomes or at + size > started:
            mine = {outcomes.get(conn, "closed") for conn in choice.conns[at : at + size]}
            if at + size > started:
                mine.add("not_started")
            outcome = next((o for o in WORST_FIRST if o in mine), "closed")
        else:
            outcome = "closed"
        victims.append(Victim(entry.peer, value, size, outcome, reason))
        at += size
    return tuple(victims)
