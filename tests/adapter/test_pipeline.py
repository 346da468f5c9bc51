"""The pipeline contract: one record per line, container formats, stats, config errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapter.parsers import FORMAT_NAMES, FORMATS
from adapter.pipeline import Pipeline, PipelineConfig, encode_json
from sidecar_common.errors import ConfigError

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def make(**kw: Any) -> Pipeline:
    kw.setdefault("environ", {})
    return Pipeline(PipelineConfig(**kw))


def run(p: Pipeline, lines: list[bytes], stream: str = "stdout") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in lines:
        out += p.feed(line, stream=stream, now=0.0, wall=WALL)
    return out + p.flush()


def test_mixed_formats_in_auto_mode() -> None:
    p = make()
    lines = [
        b'{"level":"info","msg":"json"}',
        b"time=2024-01-02T03:04:05Z level=debug msg=logfmt",
        b'10.0.0.1 - - [02/Jan/2024:03:04:05 +0000] "GET /health HTTP/1.1" 200 2'
        b' "-" "kube-probe/1.29"',
        b"<13>Jan  2 03:04:05 host app[9]: syslog",
        b"I0102 03:04:05.000000 1 main.go:1] klog",
        b"WARNING:root:python",
        b"2024-01-02 03:04:05.123 [main] ERROR com.x.App - java",
        b"just plain text",
    ]
    out = run(p, lines)
    assert len(out) == len(lines)
    assert p.stats.by_format == {
        "json": 1,
        "logfmt": 1,
        "access": 1,
        "syslog": 1,
        "klog": 1,
        "python": 1,
        "java": 1,
        "plain": 1,
    }
    assert [r.get("log", {}).get("level") for r in out] == [
        "info",
        "debug",
        None,
        "info",
        "info",
        "warn",
        "error",
        None,
    ]
    assert out[2]["http"]["response"]["status_code"] == 200
    assert out[2]["user_agent"]["original"] == "kube-probe/1.29"
    assert out[7]["message"] == "just plain text"
    assert (
        out[7]["@timestamp"] == "2026-01-01T00:00:00.000Z"
    )  # no timestamp in the line: time it was read
    assert p.stats.records_out == p.stats.lines_in == len(lines)


def test_fixed_format_failure_still_gives_a_record() -> None:
    p = make(format="json")
    (rec,) = run(p, [b"2024-01-02T03:04:05Z ERROR not json at all"])
    assert rec["message"] == "not json at all" and rec["log"]["level"] == "error"
    assert p.stats.parse_failures == 1 and p.stats.parse_failures_by_format == {"json": 1}


def test_cri_lines_unwrapped_and_partials_joined() -> None:
    p = make(keep_original=True)
    lines = [
        b'2024-01-02T03:04:05.000000001Z stdout P {"msg":"a long ',
        b"2024-01-02T03:04:05.000000002Z stderr F ERROR:app:on stderr",
        b"2024-01-02T03:04:05.000000003Z stdout P line split ",
        b'2024-01-02T03:04:05.000000004Z stdout F in three"}',
        b"2024-01-02T03:04:06Z stdout F plain inner",
    ]
    out = run(p, lines)
    by_msg = {r["message"]: r for r in out}
    assert set(by_msg) == {"a long line split in three", "on stderr", "plain inner"}
    joined = by_msg["a long line split in three"]
    assert joined["stream"] == "stdout"
    assert joined["event"]["original"] == "\n".join(
        x.decode() for x in (lines[0], lines[2], lines[3])
    )
    assert (
        by_msg["on stderr"]["stream"] == "stderr" and by_msg["on stderr"]["log"]["level"] == "error"
    )
    assert by_msg["plain inner"]["@timestamp"] == "2024-01-02T03:04:06.000Z"  # the runtime's time
    assert p.stats.lines_in == 5 and p.stats.records_out == 3


def test_cri_multiline_java_trace_inside_container_lines() -> None:
    p = make(format="cri")
    lines = [
        b"2024-01-02T03:04:05Z stdout F 2024-01-02 03:04:05.123 [main] ERROR com.x.App - failed",
        b"2024-01-02T03:04:05Z stdout F java.lang.IllegalStateException: bad",
        b"2024-01-02T03:04:05Z stdout F \tat com.x.App.main(App.java:3)",
    ]
    (rec,) = run(p, lines)
    assert p.stats.parse_failures == 0 and p.stats.by_format == {"java": 1}
    assert rec["error"]["type"] == "java.lang.IllegalStateException"
    assert (
        rec["@timestamp"] == "2024-01-02T03:04:05.123Z"
    )  # the app's own time wins over the runtime's


def test_docker_json_file_lines() -> None:
    p = make()
    lines = [
        b'{"log":"{\\"level\\":\\"warn\\",\\"msg\\":\\"inner json\\"}\\n"'
        b',"stream":"stderr","time":"2024-01-02T03:04:05.5Z"}',
        b'{"log":"first half ","stream":"stdout","time":"2024-01-02T03:04:06Z"}',
        b'{"log":"second half\\n","stream":"stdout","time":"2024-01-02T03:04:06Z"}',
    ]
    out = run(p, lines)
    assert [(r["stream"], r["message"]) for r in out] == [
        ("stderr", "inner json"),
        ("stdout", "first half second half"),
    ]
    assert out[0]["log"]["level"] == "warn"


def test_partial_lines_at_end_of_input_are_flushed() -> None:
    p = make()
    out = p.feed(b"2024-01-02T03:04:05Z stdout P never finished", now=0.0, wall=WALL)
    assert out == []
    (rec,) = p.flush()
    assert rec["message"] == "never finished" and "partial" in rec["tags"]


def test_truncated_and_invalid_utf8_are_tagged_never_lost() -> None:
    p = make()
    out = p.feed(b"x" * 10 + b"\xff\xfe", now=0.0, wall=WALL, truncated=True)
    out += p.feed(b"rest", now=0.0, wall=WALL, truncated=True)
    out += p.flush()
    assert [r["message"] for r in out] == ["xxxxxxxxxx\\xff\\xfe", "rest"]
    assert out[0]["tags"] == ["invalid_utf8", "truncated"]
    assert p.stats.truncated_lines == 2 and p.stats.invalid_utf8_lines == 1
    for rec in out:
        json.loads(encode_json(rec))


def test_origin_sets_log_file_path_and_separates_state() -> None:
    p = make()
    out = p.feed(b"ERROR:a:one", origin="/var/log/a.log", now=0.0, wall=WALL)
    out += p.feed(b"  continued", origin="/var/log/b.log", now=0.0, wall=WALL)
    out += p.flush()
    assert sorted((r["log"]["file"]["path"], r["message"]) for r in out) == [
        ("/var/log/a.log", "one"),
        ("/var/log/b.log", "  continued"),
    ]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_fixed_format_accepts_any_line(fmt: str) -> None:
    p = make(format=fmt)
    out = run(p, [b"", b"garbage \x00 line", b"{}", b"[", b"\xc3\x28"])
    assert len(out) == 5 and p.stats.lines_in == 5


def test_custom_format() -> None:
    p = make(format="custom", custom_patterns=[r"(?P<level>[A-Z]+)\|(?P<msg>.*)"])
    out = run(p, [b"WARN|careful", b"no pipe"])
    assert out[0]["log"]["level"] == "warn" and out[0]["message"] == "careful"
    assert out[1]["message"] == "no pipe" and p.stats.parse_failures == 1


@pytest.mark.parametrize(
    "config",
    [
        {"format": "yaml"},
        {"format": "custom"},
        {"format": "custom", "custom_patterns": ["("]},
        {"schema": "gelf"},
        {"timezone": "Nowhere/Land"},
        {"continuation": "("},
        {"redact_patterns": ["["]},
        {"static_fields": {"message": "x"}},
        {"flush_timeout": -1.0},
    ],
)
def test_bad_config_is_a_config_error(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make(**config)


def test_format_names() -> None:
    assert FORMAT_NAMES[0] == "auto" and FORMAT_NAMES[-1] == "custom"
    assert {
        "json",
        "logfmt",
        "access",
        "syslog",
        "python",
        "java",
        "klog",
        "cri",
        "docker",
        "plain",
    } <= set(FORMAT_NAMES)


def test_a_parser_bug_still_gives_the_line_its_record(monkeypatch: pytest.MonkeyPatch) -> None:
    import adapter.pipeline

    def broken(text: str, ctx: object) -> object:
        raise ValueError("parser bug")

    monkeypatch.setattr(adapter.pipeline, "detect_parse", broken)
    p = make()
    (rec,) = p.feed(b"password=hunter2 \xff", now=0.0, wall=WALL)
    assert rec["message"] == "password=[REDACTED] \\xff"
    assert rec["tags"] == ["internal_error"]
    assert p.stats.internal_errors == 1 and p.stats.records_out == 1


def test_poll_and_next_deadline_with_nothing_pending() -> None:
    p = make()
    assert p.next_deadline() is None and p.poll(1e9) == [] and p.flush() == []


def test_fixed_cri_format_counts_a_foreign_line_once() -> None:
    p = make(format="cri")
    (rec,) = run(p, [b'{"msg":"not a CRI line"}'])
    assert rec["message"] == "not a CRI line"
    assert p.stats.parse_failures_by_format == {"cri": 1}
