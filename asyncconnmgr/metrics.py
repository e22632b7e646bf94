"""Metrics for a `ConnManager`: a Prometheus collector and OpenTelemetry instruments.

Both are optional extras and this module imports neither library until it is used:
`PrometheusCollector` needs `asyncconnmgr[prometheus]` (prometheus_client), `instrument()`
needs `asyncconnmgr[otel]` (opentelemetry-api only; the SDK is the application's choice).

Both export the same names, under a prefix (`libp2p_connmgr` by default, like nim-libp2p's
and js-libp2p's connection manager metrics):

==================================  =========  ==========================================
name                                kind       labels (every value always present)
==================================  =========  ==========================================
`<prefix>_connections`              gauge      direction (inbound/outbound/unknown),
                                               state (open/closing)
`<prefix>_peers`                    gauge
`<prefix>_protected_peers`          gauge
`<prefix>_temporary_entries`        gauge
`<prefix>_trims_total`              counter    trigger (explicit/background/ceiling)
`<prefix>_pruned_connections_total` counter    outcome (see `OUTCOMES`)
`<prefix>_pruned_peers_total`       counter
`<prefix>_ignored_notifications_total` counter
`<prefix>_loop_failures_total`      counter    loop (consumer/trimmer/decayer/reaper)
`<prefix>_trim_duration_seconds`    histogram  (buckets `TRIM_DURATION_BUCKETS`)
`<prefix>_peer_tag_value`           gauge      (buckets `PEER_VALUE_BUCKETS`)
                                    histogram
==================================  =========  ==========================================

Every value is read from the manager when it is scraped or collected (`get_info()`,
`peer_values()`), except the trim durations, which a trim listener records as each trim
ends; so the duration histogram counts the trims since the collector was attached, while
`_trims_total` counts every trim of the manager. The distribution of peer values is
computed at each scrape from every connected peer's value; no metric has a per-peer label.

In Prometheus, `_peer_tag_value` is a gauge histogram (its counts go down as well as up:
`_bucket`, `_gcount`, `_gsum`); OpenTelemetry has no observable histogram, so there it is a
gauge of the same cumulative bucket counts with an `le` attribute (`histogram_quantile`
applies to either). An OpenTelemetry histogram has no point before its first recording, so
`_trim_duration_seconds` appears there with the first trim that ends.

Scrapes may come from another thread (prometheus_client's HTTP server, an OpenTelemetry
periodic reader): each counter is read whole, but two counters of one scrape may be a
notification apart. Every call here is synchronous and never waits.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from . import _models
from ._manager import ConnManager
from ._models import OUTCOMES, TRIGGERS, ManagerInfo, TrimResult

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from prometheus_client.metrics_core import Metric

    # prometheus_client up to 0.22 types `register()` as taking a subclass of its abstract
    # `Collector`, later versions a protocol: subclassing it for the type checker alone
    # satisfies both, and nothing is imported at run time.
    from prometheus_client.registry import Collector as _CollectorBase
else:
    _CollectorBase = object

__all__ = [
    "DEFAULT_PREFIX",
    "DIRECTIONS",
    "LOOPS",
    "PEER_VALUE_BUCKETS",
    "STATES",
    "TRIM_DURATION_BUCKETS",
    "Instrumentation",
    "PrometheusCollector",
    "instrument",
]

#: The prefix of every metric name unless another is given.
DEFAULT_PREFIX: Final = "libp2p_connmgr"
#: The `direction` label of `<prefix>_connections`.
DIRECTIONS: Final = ("inbound", "outbound", "unknown")
#: The `state` label of `<prefix>_connections`: open (counted in `conn_count`) or being
#: closed by a trim (`closing_count`).
STATES: Final = ("open", "closing")
#: The `loop` label of `<prefix>_loop_failures_total`: the manager's background loops.
LOOPS: Final = _models.LOOPS
#: Upper bounds (seconds) of the `<prefix>_trim_duration_seconds` buckets. A trim runs its
#: closes concurrently, so it lasts about as long as its slowest close: milliseconds for a
#: healthy transport (1 ms to 0.5 s, finely), and `close_timeout` (5 s by default) or a
#: little more when a close hangs and is cut off; the 5 and 10 s bounds set those apart.
#: A trim with more victims than `close_concurrency` runs in waves of closes, hence 30
#: and 60 s.
TRIM_DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Upper bounds of the `<prefix>_peer_tag_value` buckets. Values are sums of integer tags:
#: -1 counts the peers marked down (a negative tag), 0 the untagged, and a 1-2-5 series
#: covers the tag values libp2p subsystems give (a few units per protocol, tens to a few
#: hundred for peers a host depends on).
PEER_VALUE_BUCKETS: Final = (-1, 0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# The trigger "preview" is never counted: `preview_trim()` is not a trim.
_COUNTED_TRIGGERS: Final = tuple(t for t in TRIGGERS if t != "preview")
# Prometheus and OpenTelemetry both accept these names (OpenTelemetry allows 255 characters;
# the longest suffix below is 29).
_PREFIX_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PREFIX_MAX: Final = 200


# -- arguments and the shared reads -------------------------------------------------------------


def _check_manager(manager: object) -> ConnManager:
    if not isinstance(manager, ConnManager):
        raise TypeError(
            f"manager must be an asyncconnmgr.ConnManager, not {type(manager).__name__}"
        )
    return manager


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if len(prefix) > _PREFIX_MAX or _PREFIX_RE.fullmatch(prefix) is None:
        raise ValueError(
            f"prefix must be a letter then letters, digits or '_' (at most {_PREFIX_MAX} "
            f"characters), got {prefix!r}"
        )
    return prefix


def _missing(package: str, extra: str, error: ImportError) -> ImportError:
    return ImportError(
        f"{package} is not installed: it comes with the {extra!r} extra "
        f"(pip install 'asyncconnmgr[{extra}]')",
        name=error.name,
    )


def _with_extra(known: Sequence[str], counts: Iterable[str]) -> list[str]:
    """The known label values, then any other the manager reports, so that none is lost."""
    return [*known, *sorted(set(counts) - set(known))]


def _running(counts: list[int]) -> list[int]:
    """Per-bucket counts made cumulative, in place."""
    running = 0
    for at, count in enumerate(counts):
        running += count
        counts[at] = running
    return counts


def _cumulative(values: Iterable[float], bounds: Sequence[float]) -> tuple[list[int], float]:
    """Cumulative bucket counts of `values` (one per bound, then +Inf), and their sum."""
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for value in values:
        counts[bisect_left(bounds, value)] += 1
        total += value
    return _running(counts), total


class _Durations:
    """The trim-duration histogram, fed on the event loop and read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(TRIM_DURATION_BUCKETS) + 1)
        self._sum = 0.0

    def record(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect_left(TRIM_DURATION_BUCKETS, seconds)] += 1
            self._sum += seconds

    def read(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (one per bound, then +Inf), and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        return _running(counts), total


def _duration_of(result: TrimResult) -> float | None:
    if result.trigger == "preview":
        return None
    return result.duration


# -- Prometheus ---------------------------------------------------------------------------------


class PrometheusCollector(_CollectorBase):
    """A prometheus_client custom collector of one manager's metrics (see the module doc).

    Register it in your own registry, `registry.register(PrometheusCollector(manager))`; it
    is never registered anywhere by itself, so two managers (or two tests) never meet in
    the global registry's "Duplicated timeseries" error unless you put them there. Give two
    collectors registered in one registry different prefixes.

    Arguments:
        manager: the `ConnManager` to report on.
        prefix: the start of every metric name (a letter, then letters, digits or "_").

    Raises TypeError for a manager that is not a `ConnManager` or a prefix that is not a
    str, ValueError for a prefix that is not a valid metric name (each naming the argument),
    and ImportError naming the `prometheus` extra if prometheus_client is not installed;
    nothing is attached to the manager then.

    Creating it attaches a trim listener to the manager (for the durations); `close()`
    detaches it, after which `collect()` yields nothing (unregister it from the registry
    too). It may be created outside the event loop and scraped from any thread.
    """

    def __init__(self, manager: ConnManager, prefix: str = DEFAULT_PREFIX) -> None:
        self._manager = _check_manager(manager)
        self._prefix = _check_prefix(prefix)
        try:
            import prometheus_client.core  # noqa: F401
        except ImportError as error:
            raise _missing("prometheus_client", "prometheus", error) from error
        self._durations = _Durations()
        self._closed = False
        self._remove: Callable[[], None] = manager.add_trim_listener(self._on_trim)

    @property
    def prefix(self) -> str:
        """The start of every metric name."""
        return self._prefix

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def _on_trim(self, result: TrimResult) -> None:
        seconds = _duration_of(result)
        if seconds is not None:
            self._durations.record(seconds)

    def close(self) -> None:
        """Detaches from the manager: no trim is recorded and `collect()` yields nothing.

        Idempotent. It does not unregister the collector from a registry (it does not know
        which): call `registry.unregister(collector)` for that.
        """
        if not self._closed:
            self._closed = True
            self._remove()

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples, so a registry can refuse a duplicate name."""
        if self._closed:
            return
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        """The metric families with the manager's values now (nothing after `close()`)."""
        if self._closed:
            return
        yield from self._families(self._manager.get_info())

    def _families(self, info: ManagerInfo | None) -> Iterator[Metric]:
        """The families, empty if `info` is None, else with the values `info` holds."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeHistogramMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        p = self._prefix
        conns = GaugeMetricFamily(
            f"{p}_connections",
            "Connections the manager tracks, by direction and state (open, or being closed "
            "by a trim).",
            labels=["direction", "state"],
        )
        peers = GaugeMetricFamily(f"{p}_peers", "Peers with at least one connection.")
        protected = GaugeMetricFamily(f"{p}_protected_peers", "Peers protected under a tag.")
        temporary = GaugeMetricFamily(
            f"{p}_temporary_entries", "Peers tagged before they connected (temporary entries)."
        )
        trims = CounterMetricFamily(
            f"{p}_trims_total", "Trims started, by what started them.", labels=["trigger"]
        )
        pruned = CounterMetricFamily(
            f"{p}_pruned_connections_total",
            "Connections trims chose to close, by what became of them.",
            labels=["outcome"],
        )
        pruned_peers = CounterMetricFamily(
            f"{p}_pruned_peers_total", "Peers trims closed (every connection closed)."
        )
        ignored = CounterMetricFamily(
            f"{p}_ignored_notifications_total",
            "Notifications ignored (duplicate, unknown connection, or after close).",
        )
        loops = CounterMetricFamily(
            f"{p}_loop_failures_total",
            "Unexpected exceptions of a background loop (each logged; the loop restarted).",
            labels=["loop"],
        )
        durations = HistogramMetricFamily(
            f"{p}_trim_duration_seconds", "How long trims took, start to last close.", labels=[]
        )
        # A gauge histogram: the counts are a snapshot that goes down as well as up.
        values = GaugeHistogramMetricFamily(
            f"{p}_peer_tag_value", "The values (sums of tags) of the connected peers.", labels=[]
        )
        families: list[Metric] = [
            conns,
            peers,
            protected,
            temporary,
            trims,
            pruned,
            pruned_peers,
            ignored,
            loops,
            durations,
            values,
        ]
        if info is None:
            yield from families
            return

        for direction in DIRECTIONS:
            conns.add_metric([direction, "open"], info.conns_by_direction.get(direction, 0))
            conns.add_metric([direction, "closing"], info.closing_by_direction.get(direction, 0))
        peers.add_metric([], info.peer_count)
        protected.add_metric([], info.protected_count)
        temporary.add_metric([], info.temporary_count)
        for family, known, by_label in (
            (trims, _COUNTED_TRIGGERS, info.trims_by_trigger),
            (pruned, OUTCOMES, info.pruned_by_outcome),
            (loops, LOOPS, info.loop_failures),
        ):
            for label in _with_extra(known, by_label):
                family.add_metric([label], by_label.get(label, 0))
        pruned_peers.add_metric([], info.pruned_peers)
        ignored.add_metric([], info.ignored_notifications)

        counts, total = self._durations.read()
        durations.add_metric([], _buckets(TRIM_DURATION_BUCKETS, counts, floatToGoString), total)
        counts, total = _cumulative(self._manager.peer_values(), PEER_VALUE_BUCKETS)
        values.add_metric([], _buckets(PEER_VALUE_BUCKETS, counts, floatToGoString), total)
        yield from families


def _buckets(
    bounds: Sequence[float], counts: Sequence[int], spell: Callable[[float], str]
) -> list[tuple[str, float]]:
    """prometheus_client's bucket pairs: (upper bound as the exposition spells it, count)."""
    return list(zip([*(spell(b) for b in bounds), "+Inf"], counts, strict=True))


# -- OpenTelemetry ------------------------------------------------------------------------------


class Instrumentation:
    """The OpenTelemetry instruments `instrument()` created for one manager.

    `close()` detaches them: the trim listener is removed and the observable instruments
    observe nothing from then on (the OpenTelemetry API cannot delete an instrument).
    """

    def __init__(self, manager: ConnManager, prefix: str) -> None:
        self._manager = manager
        self._prefix = prefix
        self._closed = False
        self._remove: Callable[[], None] | None = None

    @property
    def prefix(self) -> str:
        """The start of every instrument name."""
        return self._prefix

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def close(self) -> None:
        """Stops observing the manager and recording its trims. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._remove is not None:
                self._remove()

    def _attach(self, meter: Meter) -> None:
        from opentelemetry.metrics import Observation

        p = self._prefix

        def observe(
            read: Callable[[ManagerInfo], Iterable[tuple[int, dict[str, str]]]],
        ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                if self._closed:
                    return []
                return [
                    Observation(value, attrs) for value, attrs in read(self._manager.get_info())
                ]

            return callback

        def connections(info: ManagerInfo) -> Iterator[tuple[int, dict[str, str]]]:
            for direction in DIRECTIONS:
                for state, counts in (
                    ("open", info.conns_by_direction),
                    ("closing", info.closing_by_direction),
                ):
                    yield counts.get(direction, 0), {"direction": direction, "state": state}

        def labelled(
            label: str, known: Sequence[str], counts_of: Callable[[ManagerInfo], Mapping[str, int]]
        ) -> Callable[[ManagerInfo], list[tuple[int, dict[str, str]]]]:
            def read(info: ManagerInfo) -> list[tuple[int, dict[str, str]]]:
                counts = counts_of(info)
                return [(counts.get(k, 0), {label: k}) for k in _with_extra(known, counts)]

            return read

        meter.create_observable_up_down_counter(
            f"{p}_connections",
            [observe(connections)],
            unit="{connection}",
            description="Connections the manager tracks, by direction and state.",
        )
        meter.create_observable_up_down_counter(
            f"{p}_peers",
            [observe(lambda info: [(info.peer_count, {})])],
            unit="{peer}",
            description="Peers with at least one connection.",
        )
        meter.create_observable_up_down_counter(
            f"{p}_protected_peers",
            [observe(lambda info: [(info.protected_count, {})])],
            unit="{peer}",
            description="Peers protected under a tag.",
        )
        meter.create_observable_up_down_counter(
            f"{p}_temporary_entries",
            [observe(lambda info: [(info.temporary_count, {})])],
            unit="{entry}",
            description="Peers tagged before they connected (temporary entries).",
        )
        meter.create_observable_counter(
            f"{p}_trims_total",
            [observe(labelled("trigger", _COUNTED_TRIGGERS, lambda i: i.trims_by_trigger))],
            unit="{trim}",
            description="Trims started, by what started them.",
        )
        meter.create_observable_counter(
            f"{p}_pruned_connections_total",
            [observe(labelled("outcome", OUTCOMES, lambda i: i.pruned_by_outcome))],
            unit="{connection}",
            description="Connections trims chose to close, by what became of them.",
        )
        meter.create_observable_counter(
            f"{p}_pruned_peers_total",
            [observe(lambda info: [(info.pruned_peers, {})])],
            unit="{peer}",
            description="Peers trims closed (every connection closed).",
        )
        meter.create_observable_counter(
            f"{p}_ignored_notifications_total",
            [observe(lambda info: [(info.ignored_notifications, {})])],
            unit="{notification}",
            description="Notifications ignored (duplicate, unknown connection, or after close).",
        )
        meter.create_observable_counter(
            f"{p}_loop_failures_total",
            [observe(labelled("loop", LOOPS, lambda i: i.loop_failures))],
            unit="{failure}",
            description="Unexpected exceptions of a background loop.",
        )

        def peer_values(options: CallbackOptions) -> Iterable[Observation]:
            if self._closed:
                return []
            counts, _ = _cumulative(self._manager.peer_values(), PEER_VALUE_BUCKETS)
            bounds = [*(str(b) for b in PEER_VALUE_BUCKETS), "+Inf"]
            return [Observation(n, {"le": le}) for le, n in zip(bounds, counts, strict=True)]

        meter.create_observable_gauge(
            f"{p}_peer_tag_value",
            [peer_values],
            unit="{peer}",
            description="Connected peers whose value (sum of tags) is at most `le`.",
        )
        durations = meter.create_histogram(
            f"{p}_trim_duration_seconds",
            unit="s",
            description="How long trims took, start to last close.",
            explicit_bucket_boundaries_advisory=TRIM_DURATION_BUCKETS,
        )

        def on_trim(result: TrimResult) -> None:
            seconds = _duration_of(result)
            if seconds is not None and not self._closed:
                durations.record(seconds)

        self._remove = self._manager.add_trim_listener(on_trim)


def instrument(
    manager: ConnManager, meter: Meter, *, prefix: str = DEFAULT_PREFIX
) -> Instrumentation:
    """Creates OpenTelemetry instruments for `manager` on `meter` (see the module doc).

    The counts are observable instruments, read from the manager whenever the meter's
    reader collects; `<prefix>_trim_duration_seconds` is a histogram recorded by a trim
    listener, its buckets advised as `TRIM_DURATION_BUCKETS`;
    `<prefix>_peer_tag_value` is a gauge of cumulative bucket counts: the number of
    connected peers whose value is at most its `le` attribute (one of `PEER_VALUE_BUCKETS`
    or "+Inf"), as in a Prometheus histogram, so `histogram_quantile` applies to it.

    Arguments:
        manager: the `ConnManager` to report on.
        meter: an `opentelemetry.metrics.Meter` (from your `MeterProvider`).
        prefix: the start of every instrument name (a letter, then letters, digits or "_").

    Returns an `Instrumentation`, whose `close()` detaches the instruments. Raises TypeError
    for a manager that is not a `ConnManager`, a meter that is not a `Meter` or a prefix
    that is not a str, ValueError for an invalid prefix (each naming the argument), and
    ImportError naming the `otel` extra if opentelemetry-api is not installed; nothing is
    created or attached then.
    """
    manager = _check_manager(manager)
    prefix = _check_prefix(prefix)
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError as error:
        raise _missing("opentelemetry-api", "otel", error) from error
    if not isinstance(meter, otel_metrics.Meter):
        raise TypeError(f"meter must be an opentelemetry.metrics.Meter, not {type(meter).__name__}")
    instrumentation = Instrumentation(manager, prefix)
    instrumentation._attach(meter)
    return instrumentation
