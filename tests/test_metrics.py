"""Metrics, read the way an operator reads them.

The Prometheus collector is registered in a fresh `CollectorRegistry`, served by
prometheus_client's own HTTP server on 127.0.0.1 (scrapes come from its thread, as in
production) and parsed back from the exposition format. The OpenTelemetry instruments are
created on an SDK `MeterProvider` and read through its `InMemoryMetricReader`. Both watch the
same churn on a `ConnManager` with a `FakeClock`: a trim explicitly asked for with slow and
failing closes (read while its closes are in flight), then a background trim; the expected
values come from what the test did and from the `TrimResult`s the manager reported.

With ``ASYNCCONNMGR_REQUIRE_METRICS=1`` (set in CI, which installs both extras) a missing
prometheus_client or opentelemetry-sdk is an error, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest

from asyncconnmgr import OUTCOMES, ConnManager, Direction, TrimResult
from asyncconnmgr.metrics import (
    LOOPS,
    PEER_VALUE_BUCKETS,
    TRIM_DURATION_BUCKETS,
    PrometheusCollector,
    instrument,
)
from asyncconnmgr.testing import FakeClock, FakeConn, settle

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.anyio

REQUIRED = os.environ.get("ASYNCCONNMGR_REQUIRE_METRICS") == "1"


def need(module: str) -> None:
    """Skips the test if `module` is missing, unless CI requires it."""
    if REQUIRED:
        __import__(module)
    else:
        pytest.importorskip(module)


# --- readings: one flat map for both backends -----------------------------------------------

#: (sample name, sorted labels) -> value, e.g. ("p_connections", (("direction", "inbound"),
#: ("state", "open"))) -> 2.0. An `le` label is spelled as a float ("0.5", "inf").
Key = tuple[str, tuple[tuple[str, str], ...]]
Reading = dict[Key, float]
Read = Callable[[], Awaitable[Reading]]


def key(name: str, **labels: str) -> Key:
    if "le" in labels:
        labels["le"] = repr(float(labels["le"]))
    return name, tuple(sorted(labels.items()))


def names(reading: Reading) -> set[str]:
    return {name for name, _ in reading}


# --- the churn both backends watch -------------------------------------------------------------

SLOW_CLOSE = 0.3  # seconds of the fake clock that each slow close takes
VALUES = {"keep": 100, "relay": 0, "bad": -5, "a": 0, "b": 1, "c": 2, "d": 3}
LATE = ("e", "f", "g", "h", "i")  # untagged peers that arrive later, with quick closes


@attrs.define
class Churn:
    """What the test did and what the manager reported, with a reading at each step."""

    clock: FakeClock
    conns: dict[str, FakeConn] = attrs.field(factory=dict)
    results: list[TrimResult] = attrs.field(factory=list)
    readings: dict[str, Reading] = attrs.field(factory=dict)


def new_manager(clock: FakeClock) -> ConnManager:
    return ConnManager(
        low_water=2,
        high_water=8,
        grace_period=0,
        silence_period=10,
        close_timeout=5,
        bounded_count=False,
        clock=clock,
    )


async def churn(manager: ConnManager, churn: Churn, read: Read) -> None:
    """Runs the churn on an entered `manager`, reading the metrics at each step.

    - "rest": keep (outbound, value 100) and relay (outbound, protected), bad (its close
      fails), a..d (slow closes); a notification for a connection nobody opened (ignored).
    - "closing": an explicit trim is closing a, b, c (bad failed at once).
    - "explicit": that trim has ended, SLOW_CLOSE seconds after it started.
    - "background": five more peers pushed the count over high water; a background trim
      (one silence period after the first) closed them, and bad failed again.
    """
    clock = churn.clock
    notifiee = manager.notifee()
    remove = manager.add_trim_listener(churn.results.append)

    async def slow(conn: FakeConn) -> None:
        await clock.sleep_until(clock.now() + SLOW_CLOSE)

    async def broken(conn: FakeConn) -> None:
        raise OSError("connection reset")

    def open_conn(peer: str, direction: Direction, hook: Any = None) -> None:
        conn = FakeConn(peer, direction=direction, notifiee=notifiee, on_close=hook)
        churn.conns[peer] = conn
        notifiee.connected(conn)

    open_conn("keep", Direction.OUTBOUND)
    open_conn("relay", Direction.OUTBOUND)
    open_conn("bad", Direction.INBOUND, broken)
    for peer in "abcd":
        open_conn(peer, Direction.INBOUND, slow)
    for peer, value in VALUES.items():
        if value:
            manager.tag_peer(peer, "app", value)
    manager.protect("relay", "circuit-relay")
    notifiee.disconnected(FakeConn("ghost", notifiee=notifiee))
    await manager.flush()
    await settle()
    churn.readings["rest"] = await read()

    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.trim_open_conns)
        await settle()
        churn.readings["closing"] = await read()
        clock.advance(SLOW_CLOSE)
        await settle()
    churn.readings["explicit"] = await read()

    for peer in LATE:
        open_conn(peer, Direction.INBOUND)
    await manager.flush()
    await settle()
    clock.advance(10)
    await settle()
    churn.readings["background"] = await read()
    remove()


def value_buckets(values: list[int]) -> dict[str, int]:
    """How many of `values` are at most each bound: what a histogram of them holds."""
    bounds = [*PEER_VALUE_BUCKETS, float("inf")]
    return {repr(float(b)): sum(1 for v in values if v <= b) for b in bounds}


def check_churn(churn: Churn, p: str, *, prometheus: bool) -> None:
    """The readings agree with what the test did and what the manager reported."""
    rest, closing = churn.readings["rest"], churn.readings["closing"]
    explicit, background = churn.readings["explicit"], churn.readings["background"]
    conns = churn.conns

    def connections(reading: Reading) -> dict[tuple[str, str], float]:
        return {
            (d, s): reading[key(f"{p}_connections", direction=d, state=s)]
            for d in ("inbound", "outbound", "unknown")
            for s in ("open", "closing")
        }

    def open_now() -> dict[str, list[FakeConn]]:
        left = [c for c in conns.values() if not c.closed]
        return {
            "inbound": [c for c in left if c.direction is Direction.INBOUND],
            "outbound": [c for c in left if c.direction is Direction.OUTBOUND],
        }

    # At rest: every label value is there, the counters at zero.
    assert connections(rest) == {
        ("inbound", "open"): 5,
        ("outbound", "open"): 2,
        ("unknown", "open"): 0,
        ("inbound", "closing"): 0,
        ("outbound", "closing"): 0,
        ("unknown", "closing"): 0,
    }
    assert rest[key(f"{p}_peers")] == len(VALUES)
    assert rest[key(f"{p}_protected_peers")] == 1
    assert rest[key(f"{p}_ignored_notifications_total")] == 1
    for trigger in ("explicit", "background", "ceiling"):
        assert rest[key(f"{p}_trims_total", trigger=trigger)] == 0
    for outcome in OUTCOMES:
        assert rest[key(f"{p}_pruned_connections_total", outcome=outcome)] == 0
    assert rest[key(f"{p}_pruned_peers_total")] == 0
    for loop in LOOPS:
        assert rest[key(f"{p}_loop_failures_total", loop=loop)] == 0
    durations_count = key(f"{p}_trim_duration_seconds_count")
    if prometheus:
        assert rest[durations_count] == 0
    else:  # an OpenTelemetry histogram has no point until something is recorded
        assert durations_count not in rest
    bucket = f"{p}_peer_tag_value_bucket"
    assert {le: rest[key(bucket, le=le)] for le in value_buckets([])} == value_buckets(
        list(VALUES.values())
    )
    if prometheus:
        assert rest[key(f"{p}_peer_tag_value_gcount")] == len(VALUES)
        assert rest[key(f"{p}_peer_tag_value_gsum")] == sum(VALUES.values())

    # Mid-trim: the slow victims are being closed; bad's close failed, so it is open again.
    first = churn.results[0]
    assert first.trigger == "explicit"
    slow_victims = [str(v.peer) for v in first.victims if v.outcome == "closed"]
    assert sorted(slow_victims) == ["a", "b", "c"]
    mid = connections(closing)
    assert mid[("inbound", "closing")] == len(slow_victims)
    assert mid[("inbound", "open")] == 5 - len(slow_victims)
    assert mid[("outbound", "open")] == 2
    assert closing[key(f"{p}_trims_total", trigger="explicit")] == 1
    assert closing.get(durations_count, 0) == 0  # not ended yet

    # After the explicit trim: its outcomes, its duration.
    assert first.duration == pytest.approx(SLOW_CLOSE)
    for outcome in OUTCOMES:
        assert explicit[key(f"{p}_pruned_connections_total", outcome=outcome)] == (
            first.outcomes.get(outcome, 0)
        )
    assert explicit[key(f"{p}_pruned_connections_total", outcome="failed")] == 1
    assert connections(explicit)[("inbound", "closing")] == 0
    assert connections(explicit)[("inbound", "open")] == 5 - len(slow_victims)

    # After the background trim: every counter is the sum over the trims the manager ran.
    assert [r.trigger for r in churn.results] == ["explicit", "background"]
    assert background[key(f"{p}_trims_total", trigger="explicit")] == 1
    assert background[key(f"{p}_trims_total", trigger="background")] == 1
    assert background[key(f"{p}_trims_total", trigger="ceiling")] == 0
    for outcome in OUTCOMES:
        assert background[key(f"{p}_pruned_connections_total", outcome=outcome)] == sum(
            r.outcomes.get(outcome, 0) for r in churn.results
        )
    closed = [c for c in conns.values() if c.closed]
    assert background[key(f"{p}_pruned_connections_total", outcome="closed")] == len(closed)
    assert background[key(f"{p}_pruned_connections_total", outcome="failed")] == (
        conns["bad"].close_calls
    )
    assert background[key(f"{p}_pruned_peers_total")] == len({c.remote_peer for c in closed})
    left = open_now()
    assert connections(background) == {
        ("inbound", "open"): len(left["inbound"]),
        ("outbound", "open"): len(left["outbound"]),
        ("unknown", "open"): 0,
        ("inbound", "closing"): 0,
        ("outbound", "closing"): 0,
        ("unknown", "closing"): 0,
    }
    peers_left = {c.remote_peer for c in conns.values() if not c.closed}
    assert background[key(f"{p}_peers")] == len(peers_left)
    values_left = [VALUES.get(str(peer), 0) for peer in peers_left]
    assert {le: background[key(bucket, le=le)] for le in value_buckets([])} == value_buckets(
        values_left
    )

    # The duration histogram holds exactly the durations of the trims that ended.
    durations = [r.duration for r in churn.results]
    assert None not in durations
    hist = f"{p}_trim_duration_seconds"
    assert background[key(f"{hist}_count")] == len(durations)
    assert background[key(f"{hist}_sum")] == pytest.approx(sum(d or 0.0 for d in durations))
    for bound in [*TRIM_DURATION_BUCKETS, float("inf")]:
        expected = sum(1 for d in durations if d is not None and d <= bound)
        assert background[key(f"{hist}_bucket", le=str(bound))] == expected


# --- Prometheus ---------------------------------------------------------------------------------


def parse_exposition(text: str) -> Reading:
    from prometheus_client.parser import text_string_to_metric_families

    reading: Reading = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            reading[key(sample.name, **sample.labels)] = sample.value
    return reading


@pytest.fixture
def registry() -> CollectorRegistry:
    need("prometheus_client")
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator[Read]:
    """Serves `registry` on 127.0.0.1 from prometheus_client's HTTP server thread."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
            return body.decode()

    async def read() -> Reading:
        # The event loop keeps running while the server thread collects.
        return parse_exposition(await anyio.to_thread.run_sync(fetch))

    yield read
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


async def test_prometheus_scrape_follows_the_trims(
    registry: CollectorRegistry, scrape: Read
) -> None:
    clock = FakeClock()
    manager = new_manager(clock)
    collector = PrometheusCollector(manager)
    registry.register(collector)
    record = Churn(clock)
    async with manager:
        await churn(manager, record, scrape)
    check_churn(record, "libp2p_connmgr", prometheus=True)


async def test_prometheus_families_and_types(registry: CollectorRegistry, scrape: Read) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    manager = new_manager(FakeClock())
    registry.register(PrometheusCollector(manager, prefix="host_a"))

    types = {
        f.name: f.type for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert types == {
        "host_a_connections": "gauge",
        "host_a_peers": "gauge",
        "host_a_protected_peers": "gauge",
        "host_a_temporary_entries": "gauge",
        "host_a_trims": "counter",
        "host_a_pruned_connections": "counter",
        "host_a_pruned_peers": "counter",
        "host_a_ignored_notifications": "counter",
        "host_a_loop_failures": "counter",
        "host_a_trim_duration_seconds": "histogram",
        "host_a_peer_tag_value": "histogram",
        "host_a_peer_tag_value_gcount": "gauge",
        "host_a_peer_tag_value_gsum": "gauge",
    }
    # Counters are exposed with the `_total` suffix the names promise.
    reading = await scrape()
    assert key("host_a_trims_total", trigger="explicit") in reading
    assert key("host_a_ignored_notifications_total") in reading


async def test_prometheus_temporary_entries(registry: CollectorRegistry, scrape: Read) -> None:
    clock = FakeClock()
    manager = ConnManager(low_water=2, high_water=4, grace_period=30, clock=clock)
    registry.register(PrometheusCollector(manager))
    async with manager:
        manager.tag_peer("early-1", "dht", 5)
        manager.tag_peer("early-2", "dht", 5)
        await settle()
        assert (await scrape())[key("libp2p_connmgr_temporary_entries")] == 2
        assert (await scrape())[key("libp2p_connmgr_peers")] == 0
        clock.advance(30)  # unused for the grace period: the reaper removes them
        await settle()
        assert (await scrape())[key("libp2p_connmgr_temporary_entries")] == 0


async def test_prometheus_collectors_stay_in_the_callers_registry(
    registry: CollectorRegistry,
) -> None:
    from prometheus_client import REGISTRY, CollectorRegistry

    first, second = new_manager(FakeClock()), new_manager(FakeClock())
    collector = PrometheusCollector(first)
    registry.register(collector)
    # Nothing reached the global registry.
    assert REGISTRY.get_sample_value("libp2p_connmgr_peers") is None
    # The same names twice in one registry are refused; another prefix is fine.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(second))
    registry.register(PrometheusCollector(second, prefix="second"))
    assert registry.get_sample_value("second_peers") == 0
    # A registry of its own takes the default prefix again.
    other = CollectorRegistry()
    other.register(PrometheusCollector(second))
    assert other.get_sample_value("libp2p_connmgr_peers") == 0


async def test_prometheus_close_detaches(registry: CollectorRegistry, scrape: Read) -> None:
    clock = FakeClock()
    manager = new_manager(clock)
    collector = PrometheusCollector(manager)
    registry.register(collector)
    async with manager:
        notifiee = manager.notifee()
        for peer in "abcd":
            notifiee.connected(FakeConn(peer, notifiee=notifiee))
        await manager.trim_open_conns()
        before = await scrape()
        assert before[key("libp2p_connmgr_trim_duration_seconds_count")] == 1

        collector.close()
        collector.close()  # idempotent
        assert collector.closed
        assert list(collector.collect()) == []
        assert not {n for n in names(await scrape()) if n.startswith("libp2p_connmgr")}

        # A new collector on the same manager records the trims from its start on, while
        # the manager's own counters go on from where they were.
        late = PrometheusCollector(manager, prefix="late")
        registry.register(late)
        notifiee.connected(FakeConn("e", notifiee=notifiee))
        notifiee.connected(FakeConn("f", notifiee=notifiee))
        await manager.trim_open_conns()
        after = await scrape()
        assert after[key("late_trim_duration_seconds_count")] == 1
        assert after[key("late_trims_total", trigger="explicit")] == 2
        late.close()


# --- OpenTelemetry ------------------------------------------------------------------------------


@attrs.define
class Otel:
    reader: Any
    meter: Any

    async def read(self) -> Reading:
        return otel_reading(self.reader)


@pytest.fixture
def otel() -> Iterator[Otel]:
    need("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield Otel(reader, provider.get_meter("asyncconnmgr-test"))
    provider.shutdown()


def otel_reading(reader: Any) -> Reading:
    """The reader's data as Prometheus would name it: a histogram's `_bucket` (cumulative),
    `_count` and `_sum`; the peer-value gauge's points (with `le`) as `_bucket`."""
    from opentelemetry.sdk.metrics.export import Histogram, MetricsData, NumberDataPoint

    data: MetricsData | None = reader.get_metrics_data()
    reading: Reading = {}
    if data is None:
        return reading
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if isinstance(metric.data, Histogram):
                    for point in metric.data.data_points:
                        running = 0
                        bounds = [*point.explicit_bounds, float("inf")]
                        for bound, count in zip(bounds, point.bucket_counts, strict=True):
                            running += count
                            reading[key(f"{metric.name}_bucket", le=str(bound))] = running
                        reading[key(f"{metric.name}_count")] = point.count
                        reading[key(f"{metric.name}_sum")] = point.sum
                    continue
                for number in metric.data.data_points:
                    assert isinstance(number, NumberDataPoint)
                    labels = {k: str(v) for k, v in (number.attributes or {}).items()}
                    name = f"{metric.name}_bucket" if "le" in labels else metric.name
                    reading[key(name, **labels)] = number.value
    return reading


async def test_otel_instruments_follow_the_trims(otel: Otel) -> None:
    clock = FakeClock()
    manager = new_manager(clock)
    handle = instrument(manager, otel.meter)
    record = Churn(clock)
    async with manager:
        await churn(manager, record, otel.read)
    check_churn(record, "libp2p_connmgr", prometheus=False)
    handle.close()


async def test_otel_duration_buckets_are_the_advised_ones(otel: Otel) -> None:
    from opentelemetry.sdk.metrics.export import Histogram

    manager = new_manager(FakeClock())
    instrument(manager, otel.meter, prefix="host")
    async with manager:
        notifiee = manager.notifee()
        for peer in "abc":
            notifiee.connected(FakeConn(peer, notifiee=notifiee))
        await manager.trim_open_conns()
    data = otel.reader.get_metrics_data()
    metrics = {m.name: m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    duration = metrics["host_trim_duration_seconds"]
    assert duration.unit == "s"
    assert isinstance(duration.data, Histogram)
    (point,) = duration.data.data_points
    assert tuple(point.explicit_bounds) == TRIM_DURATION_BUCKETS


async def test_otel_close_detaches(otel: Otel) -> None:
    manager = new_manager(FakeClock())
    handle = instrument(manager, otel.meter)
    async with manager:
        notifiee = manager.notifee()
        for peer in "abcd":
            notifiee.connected(FakeConn(peer, notifiee=notifiee))
        await manager.trim_open_conns()
        before = await otel.read()
        assert before[key("libp2p_connmgr_peers")] == 2
        assert before[key("libp2p_connmgr_trim_duration_seconds_count")] == 1

        handle.close()
        handle.close()  # idempotent
        assert handle.closed
        for peer in "ef":
            notifiee.connected(FakeConn(peer, notifiee=notifiee))
        await manager.trim_open_conns()
        after = await otel.read()
    # The observable instruments observe nothing; the histogram keeps only what it had.
    assert key("libp2p_connmgr_peers") not in after
    assert not {n for n in names(after) if n.endswith("_total")}
    assert after.get(key("libp2p_connmgr_trim_duration_seconds_count"), 1) == 1


# --- bad input, and what is imported when ----------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        (3, TypeError),
        (b"connmgr", TypeError),
        (None, TypeError),
        ("", ValueError),
        ("1connmgr", ValueError),
        ("conn-mgr", ValueError),
        ("conn:mgr", ValueError),
        ("conn mgr", ValueError),
        ("x" * 201, ValueError),
    ],
)
def test_bad_prefix_is_refused_by_name(prefix: Any, error: type[Exception]) -> None:
    need("prometheus_client")
    need("opentelemetry.sdk")
    manager = ConnManager()
    info = manager.get_info()
    with pytest.raises(error, match="prefix"):
        PrometheusCollector(manager, prefix=prefix)
    from opentelemetry.sdk.metrics import MeterProvider

    provider = MeterProvider()
    with pytest.raises(error, match="prefix"):
        instrument(manager, provider.get_meter("t"), prefix=prefix)
    provider.shutdown()
    assert manager.get_info() == info


@pytest.mark.parametrize("manager", [None, object(), "manager"])
def test_bad_manager_is_refused_by_name(manager: Any) -> None:
    need("prometheus_client")
    need("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider

    with pytest.raises(TypeError, match="manager"):
        PrometheusCollector(manager)
    provider = MeterProvider()
    with pytest.raises(TypeError, match="manager"):
        instrument(manager, provider.get_meter("t"))
    provider.shutdown()


@pytest.mark.parametrize("meter", [None, object(), "meter"])
def test_bad_meter_is_refused_by_name(meter: Any) -> None:
    need("opentelemetry")
    manager = ConnManager()
    info = manager.get_info()
    with pytest.raises(TypeError, match="meter"):
        instrument(manager, meter)
    assert manager.get_info() == info


def test_importing_the_package_imports_no_metrics_library() -> None:
    code = (
        "import sys, asyncconnmgr, asyncconnmgr.metrics\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m.split('.')[0] in ('prometheus_client', 'opentelemetry'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("blocked", "extra", "call"),
    [
        ("prometheus_client", "prometheus", "PrometheusCollector(ConnManager())"),
        ("opentelemetry", "otel", "instrument(ConnManager(), object())"),
    ],
)
def test_a_missing_extra_is_named(blocked: str, extra: str, call: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None  # makes the import fail, as if not installed\n"
        "from asyncconnmgr import ConnManager\n"
        "from asyncconnmgr.metrics import PrometheusCollector, instrument\n"
        "try:\n"
        f"    {call}\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert f"pip install 'asyncconnmgr[{extra}]'" in out.stdout
