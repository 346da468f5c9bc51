"""Redaction: secrets are masked in the raw line before it is parsed, so nothing unmasked leaves.

Masking the text once, before parsing, covers every place a secret could end up
(message, parsed fields, labels, event.original) with one regex pass per line.
Structured input is additionally masked by key (``{"password": ...}``) in the
parsers, through :data:`SECRET_KEYS`.

Defaults: values of password/secret/token/api-key style keys (``key=value``,
``key: value``, JSON ``"key": "value"``), the password in URLs
(``scheme://user:pass@host``), ``Bearer``/``Basic`` credentials, and card numbers
(13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn check:
order and timestamp numbers of that length almost never do).
"""

from __future__ import annotations

import base64
import binascii
import re

from sidecar_common.errors import ConfigError

MASK = "[REDACTED]"
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "api-key",
        "access_token",
        "refresh_token",
        "token",
        "auth",
        "authorization",
        "private_key",
    }
)
_KEYS = (
    r"(?:password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|access[_-]?token"
    r"|refresh[_-]?token|auth[_-]?token|token|private[_-]?key)"
)
_KEYWORD = re.compile(
    r"(?i:\b("
    + _KEYS
    + r")(\"|')?(\s*[:=]\s*)(\"[^\"\\]*(?:\\.[^\"\\]*)*\"|'[^']*'|[^\s&,;\"'}\]\\]+))"
)
_BEARER = re.compile(r"(?i:\b(bearer|basic)(\s+)([A-Za-z0-9\-._~+/]{8,}=*))")
_URL_PASSWORD = re.compile(r"(?i:([a-z][a-z0-9+.-]*://[^\s:/@]+:)([^\s/@]+)(@))")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}")

# Cheap prefilters on the line's bytes, so the regexes above run only on lines that could match:
# scanning every line with them would cost more than parsing it. ``_DIGITS`` maps digits to "0"
# and everything else but the group separators (space and dash, deleted) to ".": a card number
# then shows up as 13 zeros.
_DIGITS = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))
_SEPARATORS = b" -"
_THIRTEEN = b"0" * 13


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (the check every card number passes)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _keyword(m: re.Match[str]) -> str:
    key, quote, sep, value = m.group(1), m.group(2) or "", m.group(3), m.group(4)
    if value[:1] in ('"', "'"):
        return f"{key}{quote}{sep}{value[0]}{MASK}{value[0]}"
    if quote == '"':  # a JSON number or literal: keep the document JSON
        return f'{key}{quote}{sep}"{MASK}"'
    return f"{key}{quote}{sep}{MASK}"


def _bearer(m: re.Match[str]) -> str:
    if m.group(1).lower() == "basic":
        # "basic settings" is prose; Basic credentials are base64 of "user:password".
        try:
            decoded = base64.b64decode(m.group(3), validate=True)
        except (binascii.Error, ValueError):
            return m.group(0)
        if b":" not in decoded:
            return m.group(0)
    return f"{m.group(1)}{m.group(2)}{MASK}"


def _url_password(m: re.Match[str]) -> str:
    return f"{m.group(1)}{MASK}{m.group(3)}"


def _card(m: re.Match[str]) -> str:
    card = m.group(0)
    text = m.string
    start, end = m.span()
    if (start and (text[start - 1].isdigit() or text[start - 1] == ".")) or (
        end < len(text) and text[end].isdigit()
    ):
        return card  # part of a longer number or a dotted version/address
    digits = card.replace(" ", "").replace("-", "")
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return MASK
    return card


def redact_defaults(text: str, raw: bytes | None = None) -> str:
    """The default rules, each behind its prefilter.

    ``raw``, when given, is ``text`` encoded as UTF-8 (the line as read): the card-number
    prefilter then scans it instead of encoding the text again.
    """
    low = text.lower()
    if "pass" in low or "pwd" in low or "secret" in low or "token" in low or "key" in low:
        text = _KEYWORD.sub(_keyword, text)
        raw = None
    if "@" in text and "://" in text:  # caseless: no need for ``low``; "@" is the cheap test
        text = _URL_PASSWORD.sub(_url_password, text)
        raw = None
    if "bearer" in low or "basic" in low:
        text = _BEARER.sub(_bearer, text)
        raw = None
    if raw is None:
        raw = text.encode("utf-8", "replace")
    if _THIRTEEN in raw.translate(_DIGITS, _SEPARATORS):
        text = _CARD.sub(_card, text)
    return text


class Redactor:
    """Masks secrets in a line: the defaults and/or the operator's regexes.

    A user regex masks its whole match, or only its groups when it has any
    (``token=(\\w+)`` keeps ``token=``).
    """

    def __init__(
        self, *, defaults: bool = True, patterns: list[str] | None = None, setting: str = "--redact"
    ) -> None:
        self.defaults = defaults
        self.patterns: list[re.Pattern[str]] = []
        for text in patterns or []:
            try:
                self.patterns.append(re.compile(text))
            except re.error as exc:
                raise ConfigError(setting, text, f"a valid regular expression ({exc})") from exc
        self.secret_keys = SECRET_KEYS if defaults else frozenset()

    @property
    def active(self) -> bool:
        return self.defaults or bool(self.patterns)

    def __call__(self, text: str) -> str:
        if self.defaults:
            text = redact_defaults(text)
        for pattern in self.patterns:
            text = pattern.sub(_mask_groups, text)
        return text


def _mask_groups(m: re.Match[str]) -> str:
    if m.re.groups == 0:
        return MASK
    whole = m.group(0)
    start = m.start(0)
    pieces: list[str] = []
    pos = 0
    for i in range(1, m.re.groups + 1):
        s, e = m.span(i)
        if s < 0 or s - start < pos:
            continue
        pieces.append(whole[pos : s - start])
        pieces.append(MASK)
        pos = e - start
    pieces.append(whole[pos:])
    return "".join(pieces)
