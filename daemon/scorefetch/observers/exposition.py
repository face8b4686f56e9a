"""Prometheus' text format (version 0.0.4) for the few kinds of metric scorefetch keeps:
counters and one histogram it counts itself, gauges read from the ledger at each scrape.

The output is what prometheus_client's `generate_latest` wrote for the same metrics, byte
for byte (`tests/test_exposition.py` compares the two): series names and labels are an
interface (dashboards, alert rules), and so is each `_created` series. prometheus_client
itself is no longer imported: it brought http.server, wsgiref and urllib.request along
(1.9 MB resident) for the fifty lines used here.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

Labels = tuple[str, ...]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _checked(name: str, labels: Sequence[str] = ()) -> str:
    """A metric name Prometheus reads, without the suffixes the format adds itself."""
    if not _NAME.fullmatch(name) or name.endswith(("_total", "_created", "_bucket")):
        raise ValueError(f"{name!r}: not a metric name of ours")
    if any(not _NAME.fullmatch(label) or label == "le" for label in labels):
        raise ValueError(f"{name}: label names {labels!r}")
    return name


@dataclass
class Family:
    """One metric family as exposed: `# HELP`, `# TYPE`, then its samples in order."""

    name: str
    documentation: str
    kind: str  # counter, gauge, histogram
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


class GaugeFamily(Family):
    """A gauge read at scrape time: `add_metric(label values, value)` per series."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        value: float | None = None,
    ) -> None:
        super().__init__(name, documentation, "gauge")
        self._labels = tuple(labels)
        if value is not None:
            self.add_metric((), value)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        self.samples.append((self.name, dict(zip(self._labels, values, strict=True)), value))


class _Series:
    """One labelled series of a Counter: `inc(amount)`."""

    def __init__(self, lock: threading.Lock) -> None:
        self.value = 0.0
        self.created = time.time()
        self._lock = lock

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self.value += amount


class Counter:
    """A counter with labels, exposed as NAME_total (and NAME_created)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation = _checked(name, labels), documentation
        self._labels = tuple(labels)
        self._series: dict[Labels, _Series] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> _Series:
        """The series for these label values, made (at 0) on first use."""
        if len(values) != len(self._labels):
            raise ValueError(f"{self.name}: labels {self._labels}, given {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self._lock)
            return series

    def collect(self) -> Iterable[Family]:
        with self._lock:
            current = [
                (dict(zip(self._labels, k, strict=True)), s) for k, s in self._series.items()
            ]
            family = Family(self.name, self.documentation, "counter")
            family.samples = [(f"{self.name}_total", ls, s.value) for ls, s in current]
            family.samples += [(f"{self.name}_created", ls, s.created) for ls, s in current]
        yield family


class Histogram:
    """A histogram without labels: NAME_bucket{le}, NAME_count, NAME_sum (and _created)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = _checked(name), documentation
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)) or not all(map(math.isfinite, bounds)):
            raise ValueError(f"{name}: buckets must be finite and increasing; +Inf is added")
        if bounds[0] < 0:
            raise ValueError(f"{name}: a negative bucket (prometheus_client then drops _sum)")
        self._bounds = (*bounds, math.inf)
        self._counts = [0.0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for i, bound in enumerate(self._bounds):
                if value <= bound:
                    self._counts[i] += 1
                    break

    def collect(self) -> Iterable[Family]:
        family = Family(self.name, self.documentation, "histogram")
        with self._lock:
            cumulative = 0.0
            for bound, count in zip(self._bounds, self._counts, strict=True):
                cumulative += count
                le = {"le": number(bound)}
                family.samples.append((f"{self.name}_bucket", le, cumulative))
            family.samples.append((f"{self.name}_count", {}, cumulative))
            family.samples.append((f"{self.name}_sum", {}, self._sum))
            family.samples.append((f"{self.name}_created", {}, self._created))
        yield family


Collector = Callable[[], Iterable[Family]]


class Registry:
    """What one exposition holds, in the order registered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def exposition(self) -> bytes:
        return render(family for collect in self._collectors for family in collect())


def render(families: Iterable[Family]) -> bytes:
    """Families in the text format; a counter's `_total` keeps its HELP and TYPE, and each
    `_created` sample goes to a gauge family of its own after it."""
    lines: list[str] = []
    for family in families:
        created = [s for s in family.samples if s[0].endswith("_created")]
        samples = [s for s in family.samples if not s[0].endswith("_created")]
        name = f"{family.name}_total" if family.kind == "counter" else family.name
        _family_lines(lines, name, family.documentation, family.kind, samples)
        if created:
            _family_lines(lines, f"{family.name}_created", family.documentation, "gauge", created)
    return "".join(lines).encode()


def _family_lines(
    lines: list[str],
    name: str,
    documentation: str,
    kind: str,
    samples: Iterable[tuple[str, dict[str, str], float]],
) -> None:
    help_text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
    for sample, labels, value in samples:
        pairs = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items()))
        lines.append(
            f"{sample}{{{pairs}}} {number(value)}\n" if pairs else f"{sample} {number(value)}\n"
        )


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def number(value: float) -> str:
    """A value as Go prints it (what Prometheus' own exposition writes): `+Inf`, `NaN`,
    and an exponent from 10^7 up where Python would still write all the digits."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text
