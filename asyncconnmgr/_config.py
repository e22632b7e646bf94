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

__all__ = ["Config", "check_callable", "check_int", "check_seconds", "check_tag"]


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


def check_callable(name: str, value: object) -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    return value


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
    ) -> Config:
        low = check_int("low_water", low_water, minimum=0)
        high = check_int("high_water", high_water, minimum=0)
        if low > high:
            raise ValueError(f"low_water ({low}) must be <= high_water ({high})")
        return cls(
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
