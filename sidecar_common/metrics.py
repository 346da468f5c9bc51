"""Prometheus metrics, hand-written: counters, gauges, histograms, text format 0.0.4.

Why not prometheus-client: we need only the exposition format, we run on one
trio thread (no locks on the hot path), and ``parse_text`` must read back
exactly what ``render`` writes so that several worker processes' metrics can
be merged. The whole thing is a few hundred lines and has no global state:
every sidecar owns one ``Registry``.

The hot path is ``child.inc()``: a plain attribute add on a ``__slots__``
object. Callers on a hot path keep the child returned by ``family.labels(...)``
instead of looking it up per event. Nothing here is thread-safe; it does not
need to be (trio runs everything on one thread).

``render`` never raises for ordinary values; a ``*_callback`` function that
raises makes ``render`` raise, so the admin server answers that scrape with a
500 instead of publishing a partial, misleading exposition.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from .errors import SidecarError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Prometheus' own default buckets, in seconds (a request latency histogram).
DEFAULT_BUCKETS: tuple[float, ...] = (
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
)

MetricType = Literal["counter", "gauge", "histogram"]
Labels = dict[str, str]
SampleKey = tuple[str, frozenset[tuple[str, str]]]

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_METRIC_NAME_AT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_AT = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class MetricsParseError(SidecarError):
    """The text given to ``parse_text`` is not valid exposition format."""

    def __init__(self, lineno: int, line: str, reason: str) -> None:
        self.lineno = lineno
        self.line = line
        self.reason = reason
        super().__init__(f"line {lineno}: {reason}: {line!r}")


# --------------------------------------------------------------------------- children


class CounterChild:
    """One counter time series. ``inc`` is the hot path: one attribute add.

    A negative ``n`` is not checked (that would cost a compare on every call);
    counters only go up by contract.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n


class GaugeChild:
    """One gauge time series: a value that goes up and down."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n

    def dec(self, n: float = 1) -> None:
        self.value -= n

    def set(self, v: float) -> None:
        self.value = v


class HistogramChild:
    """One histogram time series.

    ``counts[i]`` is the number of observations that fell in bucket ``i`` alone
    (not cumulative; the last slot is ``+Inf``), so ``observe`` touches one
    slot; the cumulative sums Prometheus wants are computed at scrape time.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum: float = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        # bisect_left: the first bound >= v, because a bucket is "le" (<=).
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper_bound, cumulative_count)`` pairs, ending with ``(+Inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


# --------------------------------------------------------------------------- families


class Family(Generic[ChildT]):
    """A metric name with a fixed set of label names and one child per label set.

    ``labels(...)`` returns the cached child (create on first use). A family
    without label names has exactly one child, created at once so it renders
    as 0 before anything happens, and forwards ``inc``/``set``/... to it.
    """

    type: MetricType

    def __init__(self, name: str, help: str, labelnames: Iterable[str]) -> None:
        _check_metric_name(name)
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        for ln in self.labelnames:
            _check_label_name(ln)
        if len(set(self.labelnames)) != len(self.labelnames):
            raise ValueError(f"{name}: duplicate label names {self.labelnames}")
        self._children: dict[tuple[str, ...], ChildT] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def _key(self, values: tuple[object, ...], labels: Mapping[str, object]) -> tuple[str, ...]:
        if values and labels:
            raise ValueError(f"{self.name}: pass label values by position or by name, not both")
        if labels:
            if labels.keys() != set(self.labelnames):
                raise ValueError(
                    f"{self.name}: expected labels {sorted(self.labelnames)}, got {sorted(labels)}"
                )
            return tuple(str(labels[n]) for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {list(self.labelnames)}")
        return tuple(str(v) for v in values)

    def labels(self, *values: object, **labels: object) -> ChildT:
        """The child for this label set (cached). Values are turned into ``str``."""
        key = self._key(values, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def remove(self, *values: object, **labels: object) -> None:
        """Forget one label set (e.g. a backend that was removed). Absent: no-op."""
        self._children.pop(self._key(values, labels), None)

    def clear(self) -> None:
        """Forget every label set (an unlabelled family is reset to 0)."""
        self._children.clear()
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _only(self) -> ChildT:
        try:
            return self._children[()]
        except KeyError:
            raise ValueError(f"{self.name} has labels; use .labels(...)") from None

    def children(self) -> list[tuple[Labels, ChildT]]:
        """Snapshot of ``(labels, child)`` pairs, for rendering and tests."""
        return [
            (dict(zip(self.labelnames, key, strict=True)), child)
            for key, child in self._children.items()
        ]

    def render_samples(self, out: list[str]) -> None:
        raise NotImplementedError


def _render_scalar(family: Family[CounterChild] | Family[GaugeChild], out: list[str]) -> None:
    for labels, child in family.children():
        out.append(f"{family.name}{_format_labels(labels)} {_format_value(child.value)}")


class Counter(Family[CounterChild]):
    type = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, n: float = 1) -> None:
        self._only().inc(n)

    @property
    def value(self) -> float:
        return self._only().value

    def render_samples(self, out: list[str]) -> None:
        _render_scalar(self, out)


class Gauge(Family[GaugeChild]):
    type = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def inc(self, n: float = 1) -> None:
        self._only().inc(n)

    def dec(self, n: float = 1) -> None:
        self._only().dec(n)

    def set(self, v: float) -> None:
        self._only().set(v)

    @property
    def value(self) -> float:
        return self._only().value

    def render_samples(self, out: list[str]) -> None:
        _render_scalar(self, out)


class Histogram(Family[HistogramChild]):
    type = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str],
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if bounds and bounds[-1] == math.inf:
            bounds.pop()  # +Inf is always there; accept it given explicitly too
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct numbers, at least one finite")
        self.bounds: tuple[float, ...] = tuple(bounds)
        labelnames = tuple(labelnames)
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, v: float) -> None:
        self._only().observe(v)

    def render_samples(self, out: list[str]) -> None:
        for labels, child in self.children():
            for bound, cum in child.cumulative():
                le = {**labels, "le": _format_value(bound)}
                out.append(f"{self.name}_bucket{_format_labels(le)} {cum}")
            lbl = _format_labels(labels)
            out.append(f"{self.name}_sum{lbl} {_format_value(child.sum)}")
            out.append(f"{self.name}_count{lbl} {child.count}")


SampleFn = Callable[[], Iterable[tuple[Mapping[str, str], float]]]


@dataclass
class _CallbackFamily:
    """A family whose samples are computed at scrape time by ``fn``.

    "Count in the loop, publish on scrape": a sidecar keeps plain ints in its
    own objects and lets the scrape read them, paying nothing per event.
    """

    name: str
    help: str
    type: MetricType
    fn: SampleFn

    def render_samples(self, out: list[str]) -> None:
        for labels, value in self.fn():
            out.append(f"{self.name}{_format_labels(labels)} {_format_value(value)}")


_AnyFamily = Counter | Gauge | Histogram | _CallbackFamily


# --------------------------------------------------------------------------- registry


class Registry:
    """All the metrics of one process, rendered together on ``/metrics``.

    Asking twice for the same family with the same type and label names
    returns the existing one (so two components may share a metric); any other
    clash is a programming error (``ValueError``).
    """

    def __init__(self) -> None:
        self._families: dict[str, _AnyFamily] = {}

    def _get_or_add(self, family: _AnyFamily) -> _AnyFamily:
        existing = self._families.get(family.name)
        if existing is None:
            self._check_no_suffix_clash(family.name)
            self._families[family.name] = family
            return family
        if (
            type(existing) is type(family)
            and not isinstance(existing, _CallbackFamily)
            and not isinstance(family, _CallbackFamily)
            and existing.labelnames == family.labelnames
            and getattr(existing, "bounds", None) == getattr(family, "bounds", None)
        ):
            return existing
        raise ValueError(f"metric {family.name} is already registered differently")

    def _check_no_suffix_clash(self, name: str) -> None:
        # A histogram "x" owns x_bucket, x_sum and x_count.
        for other, fam in self._families.items():
            if fam.type == "histogram" and name in (
                f"{other}_bucket",
                f"{other}_sum",
                f"{other}_count",
            ):
                raise ValueError(f"metric {name} clashes with histogram {other}")

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        """A counter; the name must end in ``_total`` (our convention)."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        fam = self._get_or_add(Counter(name, help, labelnames))
        assert isinstance(fam, Counter)
        return fam

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Gauge:
        fam = self._get_or_add(Gauge(name, help, labelnames))
        assert isinstance(fam, Gauge)
        return fam

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Iterable[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        fam = self._get_or_add(Histogram(name, help, labelnames, buckets))
        assert isinstance(fam, Histogram)
        return fam

    def gauge_callback(self, name: str, help: str, fn: SampleFn) -> None:
        """Publish gauge samples computed by ``fn()`` at each scrape."""
        _check_metric_name(name)
        self._get_or_add(_CallbackFamily(name, help, "gauge", fn))

    def counter_callback(self, name: str, help: str, fn: SampleFn) -> None:
        """Publish counter samples computed by ``fn()`` at each scrape (name ends in _total)."""
        _check_metric_name(name)
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        self._get_or_add(_CallbackFamily(name, help, "counter", fn))

    def unregister(self, name: str) -> None:
        """Drop a family (absent: no-op)."""
        self._families.pop(name, None)

    def render(self) -> str:
        """The whole registry in text exposition format 0.0.4."""
        out: list[str] = []
        for fam in self._families.values():
            out.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            out.append(f"# TYPE {fam.name} {fam.type}")
            fam.render_samples(out)
        return "\n".join(out) + "\n" if out else ""


# --------------------------------------------------------------------------- formatting


def _check_metric_name(name: str) -> None:
    if not _METRIC_NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")


def _check_label_name(name: str) -> None:
    if not _LABEL_NAME_RE.match(name) or name.startswith("__"):
        raise ValueError(f"invalid label name {name!r}")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and newline (format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _format_value(v: float) -> str:
    """Exact and round-trippable: ints as ints, floats with ``repr`` (shortest exact)."""
    if isinstance(v, int):  # bool is an int too; True renders as 1
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


# --------------------------------------------------------------------------- parsing


@dataclass
class Exposition:
    """Everything ``parse_exposition`` found: samples plus the TYPE and HELP lines."""

    samples: dict[SampleKey, float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)


_HELP_UNESCAPES = {"\\": "\\", "n": "\n"}
_LABEL_UNESCAPES = {"\\": "\\", "n": "\n", '"': '"'}


def _unescape(text: str, table: Mapping[str, str], lineno: int, line: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            # Unknown escapes are kept verbatim, as Prometheus does.
            out.append(table.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _parse_value(text: str, lineno: int, line: str) -> float:
    try:
        if text in ("+Inf", "Inf"):
            return math.inf
        if text == "-Inf":
            return -math.inf
        if text == "NaN":
            return math.nan
        return float(text)
    except ValueError:
        raise MetricsParseError(lineno, line, f"bad value {text!r}") from None


def _parse_labels(line: str, i: int, lineno: int) -> tuple[list[tuple[str, str]], int]:
    """Parse ``{a="x",b="y"}`` starting at ``line[i] == "{"``; return labels and the next index."""
    labels: list[tuple[str, str]] = []
    i += 1
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == "}":
            return labels, i + 1
        m = _LABEL_NAME_AT.match(line, i)
        if not m:
            raise MetricsParseError(lineno, line, "bad label name")
        name = m.group()
        i = m.end()
        while i < n and line[i] in " \t":
            i += 1
        if line[i : i + 2] != '="':
            raise MetricsParseError(lineno, line, 'expected =" after label name')
        i += 2
        start = i
        while i < n and line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        if i >= n:
            raise MetricsParseError(lineno, line, "unterminated label value")
        labels.append((name, _unescape(line[start:i], _LABEL_UNESCAPES, lineno, line)))
        i += 1
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1
        elif i < n and line[i] == "}":
            return labels, i + 1
        else:
            raise MetricsParseError(lineno, line, "expected , or } after label value")


def parse_exposition(text: str) -> Exposition:
    """Parse text format 0.0.4 into samples, types and helps.

    Accepts everything ``render`` writes and the usual output of other
    exporters (optional timestamps, ``# `` comments, blank lines). A sample
    seen twice is an error: a valid exposition never repeats a series, and
    merging must not silently drop one.
    """
    exp = Exposition()
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                rest = parts[3] if len(parts) == 4 else ""
                if parts[1] == "HELP":
                    # The help text may start with spaces; take it verbatim after one space.
                    head = f"# HELP {parts[2]}"
                    raw = line[len(head) + 1 :] if line.startswith(head + " ") else rest
                    exp.helps[parts[2]] = _unescape(raw, _HELP_UNESCAPES, lineno, line)
                else:
                    exp.types[parts[2]] = rest.strip()
            continue
        m = _METRIC_NAME_AT.match(line)
        if not m:
            raise MetricsParseError(lineno, line, "bad metric name")
        name = m.group()
        i = m.end()
        labels: list[tuple[str, str]] = []
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i, lineno)
        fields = line[i:].split()
        if len(fields) not in (1, 2) or (i < len(line) and line[i] not in " \t"):
            raise MetricsParseError(lineno, line, "expected a value and an optional timestamp")
        key: SampleKey = (name, frozenset(labels))
        if len({n for n, _ in labels}) != len(labels):
            raise MetricsParseError(lineno, line, "duplicate label name")
        if key in exp.samples:
            raise MetricsParseError(lineno, line, "duplicate sample")
        exp.samples[key] = _parse_value(fields[0], lineno, line)
    return exp


def parse_text(text: str) -> dict[SampleKey, float]:
    """Parse exposition text into ``{(name, frozenset(labels.items())): value}``.

    Histogram samples come back as their ``_bucket`` (with ``le``), ``_sum``
    and ``_count`` series, exactly as rendered.
    """
    return parse_exposition(text).samples
