"""Property tests: whatever bytes come in, nothing raises, no line is lost, the output is JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.parsers import FORMATS
from adapter.pipeline import Pipeline, PipelineConfig, encode_json

# Lines as the shell delivers them: no newline inside. Raw bytes, plus text built from fragments
# of real formats so the parsers' deeper branches are reached, not just "no format matched".
FRAGMENTS = [
    "{",
    "}",
    '"',
    ":",
    ",",
    "[",
    "]",
    "<13>",
    "<165>1 ",
    "Jan  2 03:04:05 ",
    "2024-01-02T03:04:05.123Z ",
    "2024-01-02 03:04:05,123 ",
    "I0102 03:04:05.000000 1 a.go:1] ",
    "stdout F ",
    "stderr P ",
    "ERROR",
    "INFO:",
    ":root:",
    " - ",
    "[main] ",
    "Traceback (most recent call last):",
    '  File "x", line 1',
    "\tat a.B(C.java:1)",
    "Caused by: x.YException: z",
    "panic: ",
    "goroutine 1 [running]:",
    "password=",
    "Bearer ",
    "4111 1111 1111 1111",
    "key=value ",
    'msg="quoted \\" x" ',
    '{"log":"',
    '\\n","stream":"stdout","time":"2024-01-02T03:04:05Z"}',
    "127.0.0.1 - - [02/Jan/2024:03:04:05 +0000] ",
    '"GET / HTTP/1.1" 200 5',
    '{"msg":"\\ud800x"}',
    "\ud800",
    "NaN",
    "1e999",
    "\x00",
    "é",
    " ",
]
text_lines = st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(
    lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
)
raw_lines = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))
lines = st.lists(st.one_of(text_lines, raw_lines), min_size=1, max_size=25)
formats = st.sampled_from(["auto", "custom", *FORMATS])


def lines_in(record: dict[str, Any], schema: str) -> int:
    original = (
        record["event"]["original"]
        if schema == "ecs"
        else record["attributes"]["log.record.original"]
    )
    return int(original.count("\n")) + 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines,
    fmt=formats,
    schema=st.sampled_from(["ecs", "otel"]),
    multiline=st.booleans(),
    streams=st.lists(st.sampled_from(["stdout", "stderr"]), min_size=25, max_size=25),
    truncated=st.lists(st.booleans(), min_size=25, max_size=25),
    polls=st.lists(st.floats(min_value=0, max_value=1), min_size=25, max_size=25),
)
def test_every_line_in_exactly_one_record(
    lines: list[bytes],
    fmt: str,
    schema: str,
    multiline: bool,
    streams: list[str],
    truncated: list[bool],
    polls: list[float],
) -> None:
    p = Pipeline(
        PipelineConfig(
            format=fmt,
            custom_patterns=[r"(?P<level>\w+) (?P<msg>.*)"],
            schema=schema,  # type: ignore[arg-type]
            keep_original=True,
            multiline=multiline,
            environ={"POD_NAME": "p"},
        )
    )
    out: list[dict[str, Any]] = []
    now = 0.0
    for i, line in enumerate(lines):
        now += polls[i]
        out += p.poll(now)
        out += p.feed(
            line, stream=streams[i], now=now, wall=1_767_225_600.0 + now, truncated=truncated[i]
        )
    out += p.flush()
    assert p.next_deadline() is None
    assert sum(lines_in(r, schema) for r in out) == len(lines)
    assert p.stats.lines_in == len(lines)
    assert p.stats.records_out == len(out)
    assert p.stats.internal_errors == 0
    for record in out:
        encoded = encode_json(record)
        assert b"\n" not in encoded
        encoded.decode("utf-8")
        assert isinstance(json.loads(encoded), dict)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_every_parser_survives_any_text(data: bytes) -> None:
    from adapter.detect import detect_parse
    from adapter.parsers import ParseContext

    text = data.decode("utf-8", "backslashreplace")
    ctx = ParseContext(wall=1_767_225_600.0)
    for parser in FORMATS.values():
        result = parser(text, ctx)
        assert result is None or isinstance(result, dict)
    fmt, partial, _ = detect_parse(text, ctx)
    assert isinstance(partial, dict) and fmt


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines,
    fmt=st.sampled_from(["auto", "json", "access", "plain", "cri"]),
    truncated=st.sets(st.integers(0, 24), max_size=3),
    static=st.booleans(),
)
def test_a_batch_gives_what_its_lines_give_one_by_one(
    lines: list[bytes], fmt: str, truncated: set[int], static: bool
) -> None:
    """feed_lines (what the shell calls per read) is feed, line after line, in one call."""

    def make() -> Pipeline:
        return Pipeline(
            PipelineConfig(
                format=fmt,
                keep_original=True,
                static_fields={"service.name": "svc"} if static else {},
                environ={"POD_NAME": "p"},
            )
        )

    # Each line three times over, so the compiled builders of repeated layouts take part.
    lines = [line for line in lines for _ in range(3)]
    one, batch = make(), make()
    expected: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        expected += one.feed(line, now=1.0, wall=1_767_225_600.0, truncated=i in truncated)
    expected += one.flush()
    got = batch.feed_lines(lines, now=1.0, wall=1_767_225_600.0, truncated=truncated)
    got += batch.flush()
    assert [encode_json(r) for r in got] == [encode_json(r) for r in expected]
    assert vars(batch.stats) == vars(one.stats)
