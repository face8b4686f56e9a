"""observers/exposition.py writes what prometheus_client's `generate_latest` wrote for the
same metrics, byte for byte (the `_created` timestamps aside): the series are an interface,
and prometheus_client is the reference (a dev dependency, as bs4 is for the HTML reader)."""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import prometheus_client as reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from scorefetch.observers import exposition as ours
from scorefetch.observers.metrics import LATENCY_BUCKETS

label_values = st.text(min_size=0, max_size=12)  # quotes, backslashes, newlines, anything
amounts = st.floats(min_value=0, max_value=1e15, allow_nan=False) | st.integers(0, 10**12)
observations = st.floats(min_value=0, max_value=1e7, allow_nan=False)
gauge_values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**9), 10**9)
CREATED = re.compile(r"^(\w+_created(?:\{.*\})?) \S+$", re.MULTILINE)


def _same_clock(text: bytes) -> str:
    return CREATED.sub(r"\1 T", text.decode())


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.tuples(label_values, st.sampled_from(["a", "b"]), amounts), max_size=8),
    observed=st.lists(observations, max_size=20),
    gauges=st.lists(st.tuples(label_values, gauge_values), max_size=5),
    help_text=st.text(max_size=30),
)
def test_the_exposition_is_prometheus_clients(
    counts: list[tuple[str, str, float]],
    observed: list[float],
    gauges: list[tuple[str, Any]],
    help_text: str,
) -> None:
    registry = reference.CollectorRegistry()
    theirs_counter = reference.Counter(
        "scorefetch_deliveries", help_text, ["vendor", "outcome"], registry=registry
    )
    theirs_histogram = reference.Histogram(
        "scorefetch_notification_to_file_seconds",
        "latency",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    mine = ours.Registry()
    my_counter = ours.Counter("scorefetch_deliveries", help_text, ["vendor", "outcome"])
    my_histogram = ours.Histogram(
        "scorefetch_notification_to_file_seconds", "latency", LATENCY_BUCKETS
    )
    mine.register(my_counter.collect)
    mine.register(my_histogram.collect)
    for vendor, outcome, amount in counts:
        theirs_counter.labels(vendor, outcome).inc(amount)
        my_counter.labels(vendor, outcome).inc(amount)
    for value in observed:
        theirs_histogram.observe(value)
        my_histogram.observe(value)

    class Gauges:
        def collect(self) -> Any:
            family = GaugeMetricFamily("scorefetch_pending_deliveries", help_text, labels=["v"])
            for label, value in gauges:
                family.add_metric([label], value)
            yield family
            yield GaugeMetricFamily("scorefetch_imap_connected", "1 while", value=1)

    def my_gauges() -> Any:
        family = ours.GaugeFamily("scorefetch_pending_deliveries", help_text, labels=["v"])
        for label, value in gauges:
            family.add_metric([label], value)
        yield family
        yield ours.GaugeFamily("scorefetch_imap_connected", "1 while", value=1)

    registry.register(Gauges())
    mine.register(my_gauges)
    expected = reference.generate_latest(registry)
    assert _same_clock(mine.exposition()) == _same_clock(expected)
    list(text_string_to_metric_families(mine.exposition().decode()))  # and it parses


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (0, "0.0"),
        (1234567.0, "1.234567e+06"),
        (14400, "14400.0"),
        (1.7e9, "1.7e+09"),
        (-1234567.0, "-1234567.0"),
    ],
)
def test_numbers_are_written_as_go_writes_them(value: float, text: str) -> None:
    assert ours.number(value) == text
    assert reference.utils.floatToGoString(value) == text


def test_a_counter_only_goes_up() -> None:
    with pytest.raises(ValueError, match="only goes up"):
        ours.Counter("c", "c", ["v"]).labels("x").inc(-1)
    with pytest.raises(ValueError, match="labels"):
        ours.Counter("c", "c", ["v"]).labels("x", "y")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ours.Counter("deliveries_total", "twice _total", []),
        lambda: ours.Counter("a-b", "not a name", []),
        lambda: ours.Counter("c", "a label named le", ["le"]),
        lambda: ours.Histogram("h", "+Inf twice", [1, math.inf]),
        lambda: ours.Histogram("h", "unsorted", [2, 1]),
        lambda: ours.Histogram("h", "repeated", [1, 1]),
        lambda: ours.Histogram("h", "negative", [-1, 1]),
        lambda: ours.Histogram("h", "none", []),
    ],
)
def test_what_prometheus_client_refused_or_wrote_otherwise_is_refused(make: Any) -> None:
    """Metrics whose text would differ from prometheus_client's (a second `+Inf` series,
    `_total_total`, a dropped `_sum`) are not made at all."""
    with pytest.raises(ValueError):
        make()


def test_a_counter_without_series_and_concurrent_counting() -> None:
    """No series yet: HELP and TYPE alone (a forward with no destinations). Counting from
    threads while the text is written loses nothing."""
    idle = ours.Counter("scorefetch_forward", "none yet", ["destination", "outcome"])
    assert ours.render(idle.collect()) == (
        b"# HELP scorefetch_forward_total none yet\n# TYPE scorefetch_forward_total counter\n"
    )
    counter = ours.Counter("c", "c", ["v"])
    histogram = ours.Histogram("h", "h", [1.0])
    registry = ours.Registry()
    registry.register(counter.collect)
    registry.register(histogram.collect)

    def count() -> None:
        for _ in range(2000):
            counter.labels("x").inc()
            histogram.observe(0.5)

    workers = [threading.Thread(target=count) for _ in range(4)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        registry.exposition()
    for worker in workers:
        worker.join()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(registry.exposition().decode())
        for s in family.samples
    }
    assert samples[("c_total", (("v", "x"),))] == 8000
    assert samples[("h_count", ())] == samples[("h_bucket", (("le", "+Inf"),))] == 8000
