"""Custom formats: regexes with named groups, given on the command line or in the config.

Group names are structured keys: ``message``/``msg``, ``timestamp``/``time``, ``level``,
``logger``, ``thread``, ``pid``, ``host``, ... (see adapter.parsers.base.FIELD_MAP), or an
ECS name with ``__`` for each dot (``http__request__method``); any other group lands
under labels. The first pattern that matches the whole line wins.
"""

from __future__ import annotations

import re

from adapter.parsers.base import ParseContext, Partial, from_groups
from sidecar_common.errors import ConfigError


class CustomParser:
    """Parses lines with user regexes; built once, from validated patterns."""

    def __init__(self, patterns: list[str], *, setting: str = "--pattern") -> None:
        if not patterns:
            raise ConfigError(
                setting, "", "at least one regex with named groups for --format custom"
            )
        self.patterns: list[re.Pattern[str]] = []
        for text in patterns:
            try:
                pattern = re.compile(text, re.DOTALL)
            except re.error as exc:
                raise ConfigError(setting, text, f"a valid regular expression ({exc})") from exc
            if not pattern.groupindex:
                raise ConfigError(
                    setting, text, "a regex with named groups such as (?P<message>.*)"
                )
            self.patterns.append(pattern)

    def __call__(self, text: str, ctx: ParseContext) -> Partial | None:
        for pattern in self.patterns:
            m = pattern.fullmatch(text)
            if m is not None:
                return from_groups(m.groupdict(), ctx)
        return None
