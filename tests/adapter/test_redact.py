"""Redaction of secrets before anything leaves."""

from __future__ import annotations

import json

import pytest

from adapter.pipeline import Pipeline, PipelineConfig, encode_json
from adapter.redact import MASK, Redactor, luhn_ok
from sidecar_common.errors import ConfigError

CASES = [
    ("login password=hunter2 ok", f"login password={MASK} ok"),
    ("PASSWORD: hunter2", f"PASSWORD: {MASK}"),
    ('{"user":"bob","password":"hun\\"ter2","x":1}', f'{{"user":"bob","password":"{MASK}","x":1}}'),
    ('{"api_key": 12345}', f'{{"api_key": "{MASK}"}}'),
    ("client_secret='abc def' rest", f"client_secret='{MASK}' rest"),
    ("url=https://u?token=abc123&x=1", f"url=https://u?token={MASK}&x=1"),
    (
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        f"Authorization: Bearer {MASK}",
    ),
    ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {MASK}"),
    (
        "connecting to postgres://app:s3cr3t@db:5432/shop",
        f"connecting to postgres://app:{MASK}@db:5432/shop",
    ),
    ("paid with 4111 1111 1111 1111 today", f"paid with {MASK} today"),
    ("card=4111-1111-1111-1111", f"card={MASK}"),
    ("amex 378282246310005.", f"amex {MASK}."),
    # Not secrets: must stay as they are.
    ("order 4111111111111112 shipped", "order 4111111111111112 shipped"),  # fails Luhn
    ("trace 17041646451230000000", "trace 17041646451230000000"),  # too long for a card
    ("version 1.4111111111111111", "version 1.4111111111111111"),  # part of a dotted number
    ("basic settings were changed", "basic settings were changed"),
    ("the password policy changed", "the password policy changed"),
    (
        '127.0.0.1 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 200 5',
        '127.0.0.1 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 200 5',
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_default_rules(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_luhn() -> None:
    assert (
        luhn_ok("4111111111111111")
        and luhn_ok("5555555555554444")
        and not luhn_ok("4111111111111112")
    )


def test_user_patterns_mask_groups_or_whole_match() -> None:
    r = Redactor(defaults=False, patterns=[r"ssn=(\d{3}-\d{2}-\d{4})", r"internal-\w+"])
    assert r("ssn=123-45-6789 host internal-db1 password=x") == f"ssn={MASK} host {MASK} password=x"
    with pytest.raises(ConfigError):
        Redactor(patterns=["(unclosed"])


def test_redaction_reaches_every_field_and_the_original() -> None:
    p = Pipeline(PipelineConfig(environ={}, keep_original=True))
    lines = [
        b'{"msg":"charge 4111 1111 1111 1111","password":"hunter2"'
        b',"headers":{"Authorization":"Bearer abcdefghijk123"}}',
        b"time=2024-01-02T03:04:05Z level=info msg=login password=hunter2",
        b"2024-01-02 03:04:05,000 - app - ERROR - token=abc123def failed",
    ]
    out = []
    for line in lines:
        out += p.feed(line, now=0.0, wall=1e9)
    out += p.flush()
    assert len(out) == 3
    for rec in out:
        text = encode_json(rec).decode()
        assert (
            "hunter2" not in text
            and "4111" not in text
            and "abcdefghijk123" not in text
            and "abc123def" not in text
        )
        json.loads(text)
    assert out[0]["labels"]["password"] == MASK
    assert out[0]["message"] == f"charge {MASK}"


def test_redaction_can_be_turned_off() -> None:
    p = Pipeline(PipelineConfig(environ={}, redact_defaults=False))
    (rec,) = p.feed(b'{"msg":"x","password":"hunter2"}', now=0.0, wall=1e9)
    assert rec["labels"]["password"] == "hunter2"
