"""Multiline joining in the pipeline: tracebacks, Java/Go traces, continuation, flush timeout.

The pipeline is pure, so time is just the ``now`` each call passes: the flush
timeout is tested with exact values, no sleeping.
"""

from __future__ import annotations

from typing import Any

from adapter.pipeline import Pipeline, PipelineConfig

WALL = 1_767_225_600.0


def make(**kw: Any) -> Pipeline:
    kw.setdefault("environ", {})
    return Pipeline(PipelineConfig(**kw))


def run(lines: list[str], **kw: Any) -> tuple[Pipeline, list[dict[str, Any]]]:
    p = make(**kw)
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        out += p.feed(line.encode(), now=float(i) * 0.001, wall=WALL)
    out += p.flush()
    return p, out


PY_LOGGED = [
    "ERROR:app:payment failed",
    "Traceback (most recent call last):",
    '  File "/app/pay.py", line 10, in charge',
    "    gateway.charge(amount)",
    '  File "/app/gateway.py", line 3, in charge',
    '    raise TimeoutError("gateway slow")',
    "TimeoutError: gateway slow",
    "INFO:app:next request",
]


def test_python_logger_exception_joins_the_log_line() -> None:
    p, out = run(PY_LOGGED)
    assert len(out) == 2
    first = out[0]
    assert first["message"] == "payment failed"
    assert first["log"]["level"] == "error"
    assert first["error"]["type"] == "TimeoutError"
    assert first["error"]["message"] == "gateway slow"
    assert first["error"]["stack_trace"] == "\n".join(PY_LOGGED[1:7])
    assert out[1]["message"] == "next request"
    assert p.stats.multiline_joins == 6
    assert p.stats.lines_in == 8 and p.stats.records_out == 2


def test_python_chained_traceback_is_one_record_with_the_last_exception() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "x.py", line 2, in <module>',
        "KeyError: 'k'",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "x.py", line 4, in <module>',
        "RuntimeError: lookup failed",
        "after",
    ]
    _, out = run(lines)
    assert len(out) == 2
    rec = out[0]
    assert rec["message"] == "RuntimeError: lookup failed"
    assert rec["error"]["type"] == "RuntimeError"
    assert rec["error"]["stack_trace"] == "\n".join(lines[:9])
    assert rec["log"]["level"] == "error"
    assert out[1]["message"] == "after"


def test_traceback_after_an_info_line_is_its_own_record() -> None:
    _, out = run(
        ["INFO:app:fine", "Traceback (most recent call last):", '  File "x", line 1', "ValueError"]
    )
    assert [r["message"] for r in out] == ["fine", "ValueError"]
    assert out[1]["error"]["type"] == "ValueError" and "message" not in out[1]["error"]


JAVA = [
    "2024-01-02 03:04:05.123 [main] ERROR com.example.App - request failed",
    "java.lang.IllegalStateException: outer",
    "\tat com.example.App.handle(App.java:10)",
    "\tat com.example.App.main(App.java:4)",
    "Caused by: java.io.IOException: disk gone",
    "\tat com.example.Store.write(Store.java:7)",
    "\t... 2 more",
    "2024-01-02 03:04:06.000 [main] INFO com.example.App - recovered",
]


def test_java_stack_trace_after_log_line() -> None:
    _, out = run(JAVA)
    assert len(out) == 2
    rec = out[0]
    assert rec["message"] == "request failed"
    assert rec["error"]["type"] == "java.lang.IllegalStateException"
    assert rec["error"]["message"] == "outer"
    assert rec["error"]["stack_trace"] == "\n".join(JAVA[1:7])
    assert out[1]["message"] == "recovered"


def test_uncaught_java_exception_is_its_own_record() -> None:
    lines = [
        'Exception in thread "main" java.lang.RuntimeException: top',
        "\tat Main.main(Main.java:5)",
        "Caused by: java.lang.ArithmeticException: / by zero",
        "\tat Main.divide(Main.java:9)",
        "\t... 1 more",
    ]
    _, out = run(lines)
    assert len(out) == 1
    rec = out[0]
    assert rec["error"]["type"] == "java.lang.RuntimeException"
    assert rec["error"]["message"] == "top"
    assert rec["process"]["thread"]["name"] == "main"
    assert rec["error"]["stack_trace"] == "\n".join(lines)


def test_go_panic_with_goroutine_dump() -> None:
    lines = [
        "panic: runtime error: index out of range [5] with length 3",
        "",
        "goroutine 1 [running]:",
        "main.lookup(...)",
        "\t/app/main.go:12",
        "main.main()",
        "\t/app/main.go:7 +0x1d",
        "",
        "goroutine 6 [chan receive]:",
        "created by main.main in goroutine 1",
        "\t/app/main.go:5 +0x2a",
        "exit status 2",
        "2024-01-02T03:04:05Z restarted",
    ]
    _, out = run(lines)
    assert len(out) == 2
    rec = out[0]
    assert rec["error"]["type"] == "panic"
    assert rec["error"]["message"] == "runtime error: index out of range [5] with length 3"
    assert rec["error"]["stack_trace"] == "\n".join(lines[:12])
    assert rec["log"]["level"] == "fatal"
    assert out[1]["message"] == "restarted"


def test_indented_lines_continue_a_plain_record() -> None:
    _, out = run(["2024-01-02T03:04:05Z config:", "  port: 80", "  host: x", "next"])
    assert [r["message"] for r in out] == ["config:\n  port: 80\n  host: x", "next"]


def test_custom_continuation_regex() -> None:
    _, out = run(["BEGIN 1", "| a", "| b", "BEGIN 2"], continuation=r"\| ")
    assert [r["message"] for r in out] == ["BEGIN 1\n| a\n| b", "BEGIN 2"]


def test_multiline_off_gives_one_record_per_line() -> None:
    _, out = run(PY_LOGGED, multiline=False)
    assert len(out) == len(PY_LOGGED)


def test_json_lines_are_never_held() -> None:
    p = make()
    assert len(p.feed(b'{"msg":"a"}', now=0.0, wall=WALL)) == 1
    assert p.next_deadline() is None


def test_flush_timeout_with_explicit_now() -> None:
    p = make(flush_timeout=0.5)
    assert p.feed(b"ERROR:app:boom", now=10.0, wall=WALL) == []
    assert p.next_deadline() == 10.5
    assert p.poll(10.4) == []
    assert p.feed(b"Traceback (most recent call last):", now=10.4, wall=WALL) == []
    assert p.next_deadline() == 10.9  # every joined line pushes the deadline
    assert p.poll(10.89) == []
    out = p.poll(10.9)
    assert len(out) == 1 and out[0]["message"] == "boom"
    assert p.next_deadline() is None
    assert p.poll(100.0) == []
    # After a flush by timeout, a late continuation line is a record of its own.
    assert p.feed(b"ValueError: late", now=11.0, wall=WALL) == []
    assert [r["message"] for r in p.flush()] == ["ValueError: late"]


def test_streams_do_not_join_each_other() -> None:
    p = make()
    out = p.feed(b"ERROR:app:on stderr", stream="stderr", now=0.0, wall=WALL)
    out += p.feed(b"INFO:app:on stdout", stream="stdout", now=0.0, wall=WALL)
    out += p.feed(b"Traceback (most recent call last):", stream="stderr", now=0.0, wall=WALL)
    out += p.feed(b"  File 'x'", stream="stderr", now=0.0, wall=WALL)
    out += p.feed(b"ValueError: x", stream="stderr", now=0.0, wall=WALL)
    out += p.flush()
    assert sorted((r["stream"], r["message"]) for r in out) == [
        ("stderr", "on stderr"),
        ("stdout", "on stdout"),
    ]
    err = next(r for r in out if r["stream"] == "stderr")
    assert err["error"]["type"] == "ValueError"


def test_runaway_continuation_is_bounded() -> None:
    from adapter import multiline

    lines = ["start"] + ["  more"] * (multiline.MAX_LINES + 10)
    p, out = run(lines)
    assert len(out) == 2
    assert out[0]["message"].count("\n") == multiline.MAX_LINES - 1
    assert p.stats.lines_in == len(lines)


def test_traceback_after_a_warning_with_exc_info_joins_it() -> None:
    lines = [
        "WARNING:app:retrying",
        "Traceback (most recent call last):",
        '  File "x"',
        "OSError: x",
    ]
    _, out = run(lines)
    assert (
        len(out) == 1 and out[0]["error"]["type"] == "OSError" and out[0]["log"]["level"] == "warn"
    )
