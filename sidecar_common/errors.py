"""One exception root for the shared core.

Errors are split the way h11 and trio split them: ``ConfigError`` is the user's
fault and is reported as one line with exit status 2, never a traceback.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Root of every error the shared core raises on purpose."""


class ConfigError(SidecarError):
    """A setting has a value that cannot be used.

    Carries the setting's name, the offending value and what was expected, so
    the one-line message a user sees names all three.
    """

    def __init__(self, setting: str, value: object, expected: str) -> None:
        self.setting = setting
        self.value = value
        self.expected = expected
        super().__init__(f"invalid value for {setting}: {value!r} (expected {expected})")
