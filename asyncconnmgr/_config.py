"""Validated, frozen configuration, and the argument checks shared by the public methods.

Every check raises `TypeError` for a value of the wrong type and `ValueError` for a value
out of range, with the argument's name first in the message, and runs before any state
changes. `bool` is rejected wherever a number is asked for (it is an `int` subclass, and
`high_water=True` is always a mistake).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import attrs

__all__ = [
    "Config",
    "check_callable",
    "check_clock",
    "check_deadline",
    "check_fraction",
    "check_int",
    "check_peer",
    "check_policy",
    "check_range",
    "check_seconds",
    "check_tag",
]


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and seconds <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return seconds


def check_tag(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str")
    return value


def check_peer(value: object, name: str = "peer") -> None:
    """A peer id is any hashable value except None."""
    if value is None:
        raise TypeError(f"{name} must be a hashable peer id, not None")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{name} must be hashable, not {type(value).__name__}") from None


def check_deadline(value: object) -> float | None:
    """A deadline is a time on the manager's clock, or None; it may lie in the past."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"deadline must be a number or None, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError("deadline must not be NaN")
    return float(value)


def check_fraction(name: str, value: object, *, closed: bool = False) -> float:
    """A number strictly between 0 and 1 (or within [0, 1] if `closed`)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    inside = 0 <= number <= 1 if closed else 0 < number < 1
    if not inside:
        bounds = "between 0 and 1" if closed else "between 0 and 1 (exclusive)"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return number


def check_callable(name: str, value: object) -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    return value


def check_range(low_name: str, low: object, high_name: str, high: object) -> tuple[int, int]:
    """Two ints, the first at most the second (ValueError naming both if not)."""
    first = check_int(low_name, low)
    second = check_int(high_name, high)
    if first > second:
        raise ValueError(f"{low_name} ({first}) must be <= {high_name} ({second})")
    return first, second


def check_clock(value: object) -> None:
    """A clock has `now()` and an async `sleep_until(deadline)` (see `abc.Clock`)."""
    if not (
        callable(getattr(value, "now", None)) and callable(getattr(value, "sleep_until", None))
    ):
        raise TypeError(
            f"clock must have now() and async sleep_until(deadline) methods, "
            f"not {type(value).__name__}"
        )


def check_policy(value: object) -> None:
    """A policy has `select(candidates, target, now)`, or is a v0.1 `sort_key` policy."""
    if not (callable(getattr(value, "select", None)) or callable(getattr(value, "sort_key", None))):
        raise TypeError(
            f"policy must have a select(candidates, target, now) or a sort_key(candidate) "
            f"method, not {type(value).__name__}"
        )


@attrs.frozen(slots=True, kw_only=True)
class Config:
    """A manager's settings, checked once at construction (see `ConnManager`)."""

    low_water: int
    high_water: int
    grace_period: float
    silence_period: float
    close_timeout: float
    close_concurrency: int
    decay_resolution: float
    bounded_count: bool = False
    ceiling: int | None = None
    grace_budget: int | None = None

    @classmethod
    def build(
        cls,
        *,
        low_water: object,
        high_water: object,
        grace_period: object,
        silence_period: object,
        close_timeout: object,
        close_concurrency: object,
        decay_resolution: object,
        bounded_count: object = False,
        ceiling: object = None,
        grace_budget: object = None,
    ) -> Config:
        low = check_int("low_water", low_water, minimum=0)
        high = check_int("high_water", high_water, minimum=0)
        if low > high:
            raise ValueError(f"low_water ({low}) must be <= high_water ({high})")
        if type(bounded_count) is not bool:
            raise TypeError(f"bounded_count must be a bool, not {type(bounded_count).__name__}")
        hard: int | None = None
        budget: int | None = None
        if bounded_count:
            hard = default_ceiling(low, high) if ceiling is None else check_int("ceiling", ceiling)
            if hard < high:
                raise ValueError(f"ceiling ({hard}) must be >= high_water ({high})")
            budget = (
                default_grace_budget(low, high)
                if grace_budget is None
                else check_int("grace_budget", grace_budget)
            )
            if budget < 0:
                raise ValueError(f"grace_budget must be >= 0, got {budget}")
        elif ceiling is not None or grace_budget is not None:
            name = "ceiling" if ceiling is not None else "grace_budget"
            raise ValueError(f"{name} is a setting of the bounded count: pass bounded_count=True")
        return cls(
            bounded_count=bounded_count,
            ceiling=hard,
            grace_budget=budget,
            low_water=low,
            high_water=high,
            grace_period=check_seconds("grace_period", grace_period),
            silence_period=check_seconds("silence_period", silence_period, positive=True),
            close_timeout=check_seconds("close_timeout", close_timeout, positive=True),
            close_concurrency=check_int("close_concurrency", close_concurrency, minimum=1),
            decay_resolution=check_seconds("decay_resolution", decay_resolution, positive=True),
        )

    @property
    def trimming_disabled(self) -> bool:
        """`low_water == high_water == 0` means "never trim", on purpose."""
        return self.high_water == 0


def default_ceiling(low_water: int, high_water: int) -> int:
    """High water plus a fifth of the band (at least one): the count a flood may reach
    before a trim starts at once, whatever the silence period says.

    Chosen with the simulator (`python -m asyncconnmgr.sim`, churn and flood, seeds 1-3): with
    the default grace budget it keeps the count above high water 1.7% of the time under churn
    and 3.6% under a flood; half the band above high water left it there 9-10% of the time.
    """
    return high_water + max(1, (high_water - low_water) // 5)


def default_grace_budget(low_water: int, high_water: int) -> int:
    """Half the band: how many connections of peers in grace keep their grace.

    After a trim the count is at most low water plus the budget; half the band leaves the
    other half for the arrivals of one silence period. The whole band left the count above
    high water 62-67% of the time in the simulator's churn and flood; a budget of 2 of a
    band of 10 cost high-value peers (a peer needs its grace to earn its value).
    """
    return (high_water - low_water) // 2
