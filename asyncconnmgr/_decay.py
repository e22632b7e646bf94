"""Decaying tags: values that fade unless bumped.

A decaying tag has a name, an interval, a decay function and a bump function. Each peer
holds at most one `DecayingValue` per tag. Bumps are applied at once (no queue to overflow);
decay visits happen on the manager's decay ticks, every `decay_resolution` seconds, and a tag
is visited on the ticks where its schedule (registration time + k * interval) has come due.
Only the values of due tags are visited, so a tick costs time in proportion to them, not to
the size of the table.

The functions are pure as far as this module is concerned:

- `decay_fn(value) -> (new_value, remove)` receives the value with `last_visit` set to the
  time of the current visit, so `value.last_visit - value.last_bump` is the time since the
  last bump;
- `bump_fn(value, delta) -> new_value`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

from ._config import check_fraction, check_int, check_range, check_seconds
from ._errors import ManagerClosedError
from .abc import PeerId

__all__ = [
    "BumpFn",
    "DecayFn",
    "DecayingTag",
    "DecayingValue",
    "bump_overwrite",
    "bump_sum_bounded",
    "bump_sum_unbounded",
    "decay_expire_when_inactive",
    "decay_fixed",
    "decay_linear",
    "decay_none",
]


@attrs.frozen(slots=True)
class DecayingValue:
    """One peer's value under one decaying tag, as the decay and bump functions see it.

    `tag` is the tag's name and `peer` the peer; `added` is when the value was first bumped,
    `last_bump` when it was last bumped, `last_visit` when it was last visited (in a decay
    visit: the time of the current one); `value` is the value. Times are on the manager's
    clock.
    """

    tag: str
    peer: PeerId
    added: float
    last_visit: float
    last_bump: float
    value: int


DecayFn = Callable[[DecayingValue], "tuple[int, bool]"]
"""`decay_fn(value) -> (new_value, remove)`: run on each decay visit of a value. Returning
`remove=True` drops the value; raising leaves it unchanged (logged, counted)."""
BumpFn = Callable[[DecayingValue, int], int]
"""`bump_fn(value, delta) -> new_value`: run on each `bump()`. Must return an int; an
exception reaches the caller of `bump()` and nothing changes."""


def decay_none() -> DecayFn:
    """Never decays; the value stays until removed or the peer disconnects."""

    def decay(value: DecayingValue) -> tuple[int, bool]:
        return value.value, False

    return decay


def decay_fixed(minuend: int) -> DecayFn:
    """Subtracts `minuend` on every visit; removes the value once it reaches 0 or less.

    Raises TypeError naming `minuend` if it is not an int (a bool is not).
    """
    check_int("minuend", minuend)

    def decay(value: DecayingValue) -> tuple[int, bool]:
        after = value.value - minuend
        return after, after <= 0

    return decay


def decay_linear(coef: float) -> DecayFn:
    """Multiplies by `coef` (0 < coef < 1) on every visit, rounding down; removes at 0 or less.

    Raises TypeError naming `coef` if it is not a number, ValueError if it is not strictly
    between 0 and 1.
    """
    check_fraction("coef", coef)

    def decay(value: DecayingValue) -> tuple[int, bool]:
        after = int(value.value * coef)
        return after, after <= 0

    return decay


def decay_expire_when_inactive(after: float) -> DecayFn:
    """Keeps the value as it is, and removes it once it has not been bumped for `after` s.

    (The reference implementation's preset of this name zeroes the value on every visit and
    never removes it.) Raises TypeError naming `after` if it is not a number of seconds,
    ValueError if it is negative or not finite.
    """
    limit = check_seconds("after", after)

    def decay(value: DecayingValue) -> tuple[int, bool]:
        return value.value, value.last_visit - value.last_bump >= limit

    return decay


def bump_sum_unbounded() -> BumpFn:
    """Adds the delta to the value."""

    def bump(value: DecayingValue, delta: int) -> int:
        return value.value + delta

    return bump


def bump_sum_bounded(min: int, max: int) -> BumpFn:
    """Adds the delta and clamps the sum into [min, max].

    Raises TypeError naming `min` or `max` if it is not an int, ValueError if `min > max`.
    """
    low, high = check_range("min", min, "max", max)

    def bump(value: DecayingValue, delta: int) -> int:
        total = value.value + delta
        return low if total < low else high if total > high else total

    return bump


def bump_overwrite() -> BumpFn:
    """Replaces the value with the delta."""

    def bump(value: DecayingValue, delta: int) -> int:
        return delta

    return bump


class _DecayingTagOwner(Protocol):
    """What a `DecayingTag` handle needs from the manager that registered it."""

    def _decaying_bump(self, tag: DecayingTag, peer: PeerId, delta: int) -> None: ...

    def _decaying_remove(self, tag: DecayingTag, peer: PeerId) -> None: ...

    def _decaying_close(self, tag: DecayingTag) -> None: ...


@attrs.define(eq=False, slots=True)
class DecayingTag:
    """The handle `register_decaying_tag()` returns: bump or remove peers' values, or close.

    Every call is synchronous and applied at once (none waits, so none can be cancelled
    half-way). After `close()` (idempotent) the tag's values are gone from every peer, its
    name may be registered again, and `bump`/`remove` raise `ManagerClosedError`.

    `name` and `interval` are the tag's name and its decay interval in seconds (raised to
    the manager's `decay_resolution` if it was shorter); `decay_fn` and `bump_fn` its
    functions; `closed` is true once `close()` was called. Made by
    `ConnManager.register_decaying_tag`, never directly.
    """

    name: str
    interval: float
    decay_fn: DecayFn = attrs.field(repr=False)
    bump_fn: BumpFn = attrs.field(repr=False)
    _owner: _DecayingTagOwner = attrs.field(repr=False, alias="owner")
    closed: bool = attrs.field(default=False, init=False)

    def bump(self, peer: PeerId, delta: int) -> None:
        """Applies `bump_fn` to the peer's value (0 if it has none) and `delta`.

        A peer with no entry gets a temporary one, as `tag_peer` does. If `bump_fn` raises,
        the exception reaches the caller and nothing changes. Raises `ManagerClosedError`
        once the tag is closed, TypeError naming `delta` if it is not an int or `peer` if it
        is None or unhashable, and TypeError if `bump_fn` returns something that is not an
        int.
        """
        if self.closed:
            raise ManagerClosedError(f"decaying tag {self.name!r} is closed")
        self._owner._decaying_bump(self, peer, delta)

    def remove(self, peer: PeerId) -> None:
        """Drops the peer's value under this tag; a peer with no value is left alone.

        Raises `ManagerClosedError` once the tag is closed, TypeError naming `peer` if it is
        None or unhashable.
        """
        if self.closed:
            raise ManagerClosedError(f"decaying tag {self.name!r} is closed")
        self._owner._decaying_remove(self, peer)

    def close(self) -> None:
        """Removes this tag's values from every peer and frees its name; idempotent."""
        if not self.closed:
            self.closed = True
            self._owner._decaying_close(self)


@attrs.define(eq=False, slots=True)
class DecaySchedule:
    """The table-side state of one decaying tag: its values and when it is next due."""

    tag: DecayingTag
    next_due: float
    values: dict[PeerId, DecayingValue] = attrs.field(factory=dict)
