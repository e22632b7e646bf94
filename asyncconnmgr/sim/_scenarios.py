"""The scenarios: honest churn, and three attacks on top of it, each a frozen set of numbers.

Every scenario shares one honest population (the churn): `honest_peers` peers, a few of them
protected, the others in three kinds:

- *mesh* peers (the high-value ones): a long-lived stream while connected, and a message
  every `message_interval` seconds on average, each a bump of the decaying tag "gossip";
- *dht* peers: the static tag "kbucket" = 5 while connected, and short request streams;
- *idle* peers: no tag, no stream.

Each honest peer stays online for `session` seconds, goes offline for `offline` seconds and
comes back; a peer the host closes comes back after `redial` seconds. A share of them are
outbound (the host dials them). Honest peers spread over `honest_groups` netgroups (IPv4 /16s,
a few IPv6 /32s), at most two peers per group; attackers come from `attacker_groups` /16s.

Ranges are `(low, high)` pairs, drawn uniformly; intervals are means of exponential draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["ATTACKER_KINDS", "SCENARIOS", "Scenario", "scenario_fields"]

#: "idle": the attacker opens an inbound connection and does nothing with it; "mimic": it
#: behaves like an honest peer drawn from the honest mix of kinds (streams, tags, bumps).
ATTACKER_KINDS: tuple[str, ...] = ("idle", "mimic")

Range = tuple[float, float]


def _check_range(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    name = attribute.name
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple, not {value!r}")
    low, high = value
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise TypeError(f"{name} must hold numbers, not {type(item).__name__}")
        if not math.isfinite(item) or item < 0:
            raise ValueError(f"{name} must hold finite numbers >= 0, got {value!r}")
    if low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value!r}")


def _check_optional_range(
    instance: Scenario, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _check_range(instance, attribute, value)


def _check_count(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _check_seconds(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _check_positive(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_seconds(instance, attribute, value)
    if value == 0:
        raise ValueError(f"{attribute.name} must be > 0")


def _check_share(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_seconds(instance, attribute, value)
    assert isinstance(value, (int, float))
    if value > 1:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


def _check_kind(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ATTACKER_KINDS:
        raise ValueError(f"{attribute.name} must be one of {ATTACKER_KINDS}, got {value!r}")


def _check_name(instance: Scenario, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{attribute.name} must be a non-empty str")


@attrs.frozen(kw_only=True)
class Scenario:
    """The parameters of one scenario (all times in simulated seconds).

    Build a variant with `scenario.evolve(name=value, ...)`; every field is checked, and a
    wrong one raises TypeError or ValueError naming it.

    Manager settings: `low_water`, `high_water`, `grace_period`, `silence_period`,
    `decay_resolution`. Run: `duration`, and `warmup`, the time before which nothing is
    measured (the first honest peers are still arriving); `quick_duration` replaces
    `duration` in the quick form. Closes take `close_delay` seconds.

    Honest population: see the module's docstring. `protected_peers` of the `honest_peers`
    are protected (under "bootstrap"), connect in the first seconds and never leave; they are
    left out of every figure. `mesh_share` and `dht_share` are the shares of the others that
    are mesh and dht peers (the rest are idle); `outbound_share` the share the host dials.

    Attack: `attackers` peers of `attacker_kind`, from `attacker_groups` /16s, arriving
    evenly spread over `attacker_spread` seconds from `attacker_start`, in `attacker_waves`
    waves `attacker_wave_every` seconds apart (each wave brings `attackers` new peers). An
    attacker never leaves by itself; one the host closes comes back after `attacker_redial`
    seconds, or never if it is None.
    """

    name: str = attrs.field(validator=_check_name)
    description: str = ""
    duration: float = attrs.field(default=300.0, validator=_check_positive)
    quick_duration: float = attrs.field(default=90.0, validator=_check_positive)
    warmup: float = attrs.field(default=20.0, validator=_check_seconds)

    low_water: int = attrs.field(default=20, validator=_check_count)
    high_water: int = attrs.field(default=30, validator=_check_count)
    grace_period: float = attrs.field(default=3.0, validator=_check_seconds)
    silence_period: float = attrs.field(default=1.0, validator=_check_positive)
    decay_resolution: float = attrs.field(default=1.0, validator=_check_positive)
    close_delay: Range = attrs.field(default=(0.1, 0.3), validator=_check_range)

    honest_peers: int = attrs.field(default=100, validator=_check_count)
    protected_peers: int = attrs.field(default=3, validator=_check_count)
    honest_groups: int = attrs.field(default=60, validator=_check_count)
    ipv6_share: float = attrs.field(default=0.1, validator=_check_share)
    mesh_share: float = attrs.field(default=0.3, validator=_check_share)
    dht_share: float = attrs.field(default=0.3, validator=_check_share)
    outbound_share: float = attrs.field(default=0.3, validator=_check_share)
    honest_start: Range = attrs.field(default=(0.0, 10.0), validator=_check_range)
    session: Range = attrs.field(default=(15.0, 60.0), validator=_check_range)
    offline: Range = attrs.field(default=(5.0, 25.0), validator=_check_range)
    redial: Range = attrs.field(default=(5.0, 25.0), validator=_check_range)
    message_interval: float = attrs.field(default=1.0, validator=_check_positive)
    gossip_cap: int = attrs.field(default=10, validator=_check_count)
    gossip_decay: int = attrs.field(default=2, validator=_check_count)
    gossip_decay_interval: float = attrs.field(default=10.0, validator=_check_positive)
    kbucket_value: int = attrs.field(default=5, validator=_check_count)
    request_interval: float = attrs.field(default=5.0, validator=_check_positive)
    request_length: Range = attrs.field(default=(0.2, 1.0), validator=_check_range)

    attackers: int = attrs.field(default=0, validator=_check_count)
    attacker_kind: str = attrs.field(default="idle", validator=_check_kind)
    attacker_groups: int = attrs.field(default=2, validator=_check_count)
    attacker_start: float = attrs.field(default=60.0, validator=_check_seconds)
    attacker_spread: float = attrs.field(default=1.0, validator=_check_seconds)
    attacker_waves: int = attrs.field(default=1, validator=_check_count)
    attacker_wave_every: float = attrs.field(default=80.0, validator=_check_seconds)
    attacker_redial: Range | None = attrs.field(default=None, validator=_check_optional_range)

    def __attrs_post_init__(self) -> None:
        if self.low_water > self.high_water:
            raise ValueError(
                f"low_water ({self.low_water}) must be <= high_water ({self.high_water})"
            )
        if self.warmup >= min(self.duration, self.quick_duration):
            raise ValueError(
                f"warmup ({self.warmup}) must be shorter than duration ({self.duration}) "
                f"and quick_duration ({self.quick_duration})"
            )
        if self.protected_peers > self.honest_peers:
            raise ValueError("protected_peers must be <= honest_peers")
        if self.mesh_share + self.dht_share > 1:
            raise ValueError("mesh_share + dht_share must be <= 1")
        if self.attackers and not self.attacker_groups:
            raise ValueError("attacker_groups must be >= 1 when there are attackers")
        if self.attackers and not self.attacker_waves:
            raise ValueError("attacker_waves must be >= 1 when there are attackers")
        if self.honest_peers > self.protected_peers and not self.honest_groups:
            raise ValueError("honest_groups must be >= 1 when there are honest peers")
        if self.attacker_groups > 200 or self.honest_groups > 20_000:
            raise ValueError("attacker_groups must be <= 200 and honest_groups <= 20000")

    def evolve(self, **changes: object) -> Scenario:
        """A copy with `changes` applied (checked like the original); an unknown name raises
        ValueError naming it."""
        known = scenario_fields()
        for key in changes:
            if key not in known:
                raise ValueError(f"{key!r} is not a scenario parameter")
        changed: dict[str, Any] = dict(changes)
        return attrs.evolve(self, **changed)

    def quick(self) -> Scenario:
        """The quick form: `quick_duration` instead of `duration` (for CI)."""
        return attrs.evolve(self, duration=self.quick_duration)

    @property
    def honest_kinds(self) -> tuple[float, float]:
        """The shares of mesh and dht peers among the unprotected honest peers."""
        return self.mesh_share, self.dht_share


def scenario_fields() -> Mapping[str, type | str]:
    """Every scenario parameter and its annotated type (as written in the class)."""
    return MappingProxyType(
        {field.name: field.type for field in attrs.fields(Scenario)}  # type: ignore[misc]
    )


_CHURN = Scenario(
    name="churn",
    description=(
        "100 honest peers churn (online 15-60 s, offline 5-25 s); low 20 / high 30, "
        "grace 3 s, silence 1 s"
    ),
)

SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        "churn": _CHURN,
        "flood": attrs.evolve(
            _CHURN,
            name="flood",
            description=(
                "churn, plus 3 waves (t=60, 140, 220 s) of 300 idle inbound attackers "
                "(10x high water) from 2 /16s, each wave within one silence period"
            ),
            quick_duration=100.0,
            attackers=300,
            attacker_kind="idle",
            attacker_groups=2,
            attacker_start=60.0,
            attacker_spread=1.0,
            attacker_waves=3,
            attacker_wave_every=80.0,
            attacker_redial=None,
        ),
        "mimic": attrs.evolve(
            _CHURN,
            name="mimic",
            description=(
                "churn, plus 600 patient attackers from 4 /16s that behave like honest "
                "peers, arriving steadily over 120 s from t=20 s, redialling when closed"
            ),
            duration=240.0,
            quick_duration=100.0,
            attackers=600,
            attacker_kind="mimic",
            attacker_groups=4,
            attacker_start=20.0,
            attacker_spread=120.0,
            attacker_redial=(5.0, 25.0),
        ),
        "slot-hijack": attrs.evolve(
            _CHURN,
            name="slot-hijack",
            description=(
                "a restart: 60 idle inbound attackers from 3 /16s connect in the first 2 s "
                "and redial within 1-3 s when closed; honest peers arrive from t=5 s"
            ),
            duration=240.0,
            quick_duration=80.0,
            warmup=20.0,
            honest_start=(5.0, 15.0),
            attackers=60,
            attacker_kind="idle",
            attacker_groups=3,
            attacker_start=0.0,
            attacker_spread=2.0,
            attacker_redial=(1.0, 3.0),
        ),
    }
)
