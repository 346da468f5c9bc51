"""Metrics: render, parse back, escaping, histogram bucket math, callbacks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_common.metrics import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    MetricsParseError,
    Registry,
    escape_label_value,
    parse_exposition,
    parse_text,
)


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_counter_gauge_render_and_parse_back() -> None:
    reg = Registry()
    req = reg.counter("http_requests_total", "Requests.", ["method", "code"])
    req.labels(method="GET", code="200").inc()
    req.labels("GET", "200").inc(2)
    req.labels(method="POST", code="500").inc()
    up = reg.gauge("backends_up", "Healthy backends.")
    up.set(3)
    up.dec()
    up.inc(0.5)
    text = reg.render()
    assert "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n" in text
    assert "# TYPE backends_up gauge\n" in text
    assert parse_text(text) == {
        key("http_requests_total", method="GET", code="200"): 3,
        key("http_requests_total", method="POST", code="500"): 1,
        key("backends_up"): 2.5,
    }
    assert text.endswith("\n")


def test_unlabelled_renders_zero_before_use_and_labelled_renders_nothing() -> None:
    reg = Registry()
    reg.counter("events_total", "Events.")
    reg.counter("errors_total", "Errors.", ["kind"])
    text = reg.render()
    assert parse_text(text) == {key("events_total"): 0}
    assert "# TYPE errors_total counter" in text


def test_labels_cached_child_is_plain_attribute() -> None:
    reg = Registry()
    c = reg.counter("bytes_total", "Bytes.", ["dir"])
    child = c.labels(dir="in")
    assert c.labels(dir="in") is child
    child.inc(10)
    child.value += 5  # the hot path is literally this
    assert c.labels(dir="in").value == 15


def test_remove_and_wrong_labels() -> None:
    reg = Registry()
    g = reg.gauge("pool_size", "Pool size.", ["backend"])
    g.labels(backend="a").set(1)
    g.labels(backend="b").set(2)
    g.remove(backend="a")
    g.remove(backend="never")  # absent: no-op
    assert parse_text(reg.render()) == {key("pool_size", backend="b"): 2}
    with pytest.raises(ValueError):
        g.labels(wrong="x")
    with pytest.raises(ValueError):
        g.labels("a", "b")
    with pytest.raises(ValueError):
        g.set(1)  # labelled family has no default child


def test_registration_rules() -> None:
    reg = Registry()
    with pytest.raises(ValueError, match="_total"):
        reg.counter("requests", "no suffix")
    with pytest.raises(ValueError):
        reg.gauge("bad-name", "x")
    with pytest.raises(ValueError):
        reg.gauge("ok", "x", ["__reserved"])
    with pytest.raises(ValueError):
        reg.histogram("h_seconds", "x", ["le"])
    a = reg.counter("shared_total", "x", ["k"])
    assert reg.counter("shared_total", "x", ["k"]) is a  # same definition: shared
    with pytest.raises(ValueError):
        reg.counter("shared_total", "x", ["other"])
    with pytest.raises(ValueError):
        reg.gauge("shared_total", "x", ["k"])
    reg.histogram("lat_seconds", "x")
    with pytest.raises(ValueError):
        reg.gauge("lat_seconds_count", "x")


def test_escaping_of_label_values_and_help() -> None:
    reg = Registry()
    c = reg.counter("odd_total", 'Help with \\ backslash\nand "quotes".', ["v"])
    nasty = 'a\\b"c\nd'
    c.labels(v=nasty).inc()
    text = reg.render()
    assert 'odd_total{v="a\\\\b\\"c\\nd"} 1\n' in text
    assert '# HELP odd_total Help with \\\\ backslash\\nand "quotes".\n' in text
    exp = parse_exposition(text)
    assert exp.samples == {key("odd_total", v=nasty): 1}
    assert exp.helps["odd_total"] == 'Help with \\ backslash\nand "quotes".'
    assert exp.types["odd_total"] == "counter"
    assert escape_label_value('"') == '\\"'


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        # bucket le=1 includes exactly 1.0 (le means <=)
        ([0.5, 1.0, 1.5, 7.0, 100.0], {"1.0": 2, "2.0": 3, "5.0": 3, "+Inf": 5}),
        ([], {"1.0": 0, "2.0": 0, "5.0": 0, "+Inf": 0}),
        ([-3.0, 5.0, 5.0000001], {"1.0": 1, "2.0": 1, "5.0": 2, "+Inf": 3}),
    ],
)
def test_histogram_bucket_math(observations: list[float], expected: dict[str, int]) -> None:
    reg = Registry()
    h = reg.histogram("job_duration_seconds", "Duration.", ["job"], buckets=[5, 1, 2])
    child = h.labels(job="x")
    for v in observations:
        child.observe(v)
    samples = parse_text(reg.render())
    for le, count in expected.items():
        assert samples[key("job_duration_seconds_bucket", job="x", le=le)] == count
    assert samples[key("job_duration_seconds_count", job="x")] == len(observations)
    assert samples[key("job_duration_seconds_sum", job="x")] == pytest.approx(sum(observations))
    assert len(samples) == 4 + 2


def test_histogram_render_order_and_default_buckets() -> None:
    reg = Registry()
    h = reg.histogram("rtt_seconds", "RTT.")
    h.observe(0.3)
    lines = reg.render().splitlines()
    assert lines[:3] == [
        "# HELP rtt_seconds RTT.",
        "# TYPE rtt_seconds histogram",
        'rtt_seconds_bucket{le="0.005"} 0',
    ]
    assert lines[-3:] == [
        'rtt_seconds_bucket{le="+Inf"} 1',
        "rtt_seconds_sum 0.3",
        "rtt_seconds_count 1",
    ]
    assert len([ln for ln in lines if "_bucket" in ln]) == len(DEFAULT_BUCKETS) + 1
    with pytest.raises(ValueError):
        reg.histogram("bad_seconds", "x", buckets=[1, 1])


def test_callbacks_are_read_at_scrape_time() -> None:
    reg = Registry()
    state = {"conns": 1, "accepted": 10}
    reg.gauge_callback("conns_open", "Open.", lambda: [({"pool": "main"}, state["conns"])])
    reg.counter_callback("accepted_total", "Accepted.", lambda: [({}, state["accepted"])])
    assert parse_text(reg.render()) == {
        key("conns_open", pool="main"): 1,
        key("accepted_total"): 10,
    }
    state["conns"] = 4
    state["accepted"] = 12
    text = reg.render()
    assert "# TYPE accepted_total counter" in text
    assert parse_text(text) == {key("conns_open", pool="main"): 4, key("accepted_total"): 12}
    with pytest.raises(ValueError):
        reg.counter_callback("accepted", "x", lambda: [])


def test_special_values_round_trip() -> None:
    reg = Registry()
    g = reg.gauge("weird", "x", ["k"])
    g.labels(k="inf").set(math.inf)
    g.labels(k="ninf").set(-math.inf)
    g.labels(k="nan").set(math.nan)
    g.labels(k="tiny").set(1e-300)
    s = parse_text(reg.render())
    assert s[key("weird", k="inf")] == math.inf
    assert s[key("weird", k="ninf")] == -math.inf
    assert math.isnan(s[key("weird", k="nan")])
    assert s[key("weird", k="tiny")] == 1e-300


def test_parse_other_exporters_output() -> None:
    text = (
        "# a free comment\n"
        "\n"
        "# HELP up   spaced help\n"
        "# TYPE up gauge\n"
        'up{job="x",} 1 1700000000000\n'
        "plain_total 3e2\n"
    )
    exp = parse_exposition(text)
    assert exp.samples == {key("up", job="x"): 1, key("plain_total"): 300}
    assert exp.helps["up"] == "  spaced help"


@pytest.mark.parametrize(
    "bad",
    [
        "1metric 1",
        "m{a=1} 1",
        'm{a="x} 1',
        'm{a="x" b="y"} 1',
        "m abc",
        "m",
        "m 1 2 3",
        'm{a="1",a="2"} 1',
        "m 1\nm 2",
    ],
)
def test_parse_errors(bad: str) -> None:
    with pytest.raises(MetricsParseError):
        parse_text(bad)


label_values = st.text(max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=True, width=64)


@given(
    series=st.dictionaries(
        st.tuples(label_values, label_values),
        st.one_of(finite, st.integers(-(2**53), 2**53)),
        max_size=8,
    ),
    observations=st.lists(st.floats(-1e6, 1e6), max_size=20),
    help_text=st.text(max_size=30),
)
def test_round_trip_property(
    series: dict[tuple[str, str], float], observations: list[float], help_text: str
) -> None:
    reg = Registry()
    g = reg.gauge("prop_value", help_text, ["a", "b"])
    for (a, b), v in series.items():
        g.labels(a=a, b=b).set(v)
    h = reg.histogram("prop_seconds", help_text, ["a"], buckets=[-1, 0, 0.5, 100])
    for v in observations:
        h.labels(a='\\\n"').observe(v)
    exp = parse_exposition(reg.render())
    assert exp.helps == {"prop_value": help_text, "prop_seconds": help_text}
    got = {k: v for k, v in exp.samples.items() if k[0] == "prop_value"}
    assert got == {key("prop_value", a=a, b=b): float(v) for (a, b), v in series.items()}
    if observations:
        le = '\\\n"'
        s = exp.samples
        assert s[key("prop_seconds_count", a=le)] == len(observations)
        assert s[key("prop_seconds_bucket", a=le, le="+Inf")] == len(observations)
        assert s[key("prop_seconds_bucket", a=le, le="0.5")] == sum(
            1 for v in observations if v <= 0.5
        )
        assert s[key("prop_seconds_sum", a=le)] == sum(observations) or math.isclose(
            s[key("prop_seconds_sum", a=le)], sum(observations), abs_tol=1e-6
        )
