"""Typed settings from CLI flags, environment variables and a TOML file.

A sidecar declares its settings once, as a dataclass, and ``load_settings``
fills it from three sources with the precedence a Kubernetes operator expects:
a CLI flag (``args:`` in the pod spec) beats an environment variable (``env:``),
which beats the config file (a mounted ConfigMap), which beats the default.

Everything is validated before the sidecar starts serving, and every error is
a ``ConfigError`` naming the setting *the way the user wrote it* (``--listen``,
``AMBASSADOR_LISTEN`` or ``config file key listen``), the value and what was
expected, so the one line printed by ``cli.run_app`` is enough to fix it.

Field types understood: ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``,
``HostPort``, ``list[str]``, ``Literal[...]`` and ``X | None`` of those. Field
metadata (``dataclasses.field(metadata={...})``) may carry:

- ``help``: a description (for the README and ``--help``);
- ``min`` / ``max``: inclusive bounds for numbers;
- ``duration``: True on a ``float`` field to accept ``250ms``, ``2s``, ``1m``;
- ``default_host``: for a ``HostPort`` field, the host used for ``:port``
  (default ``127.0.0.1``: a sidecar listens on loopback unless told otherwise);
- ``flag``: the CLI flag's name if it is not ``--<field-name>``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ConfigError
from .netaddr import HostPort, parse_host_port

__all__ = [
    "MissingSettingError",
    "describe_settings",
    "load_settings",
    "parse_bool",
    "parse_duration",
    "read_toml",
    "setting_names",
]

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_BOOL_EXPECTED = "a boolean: 1/0, true/false, yes/no or on/off"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h)")
_DURATION_EXPECTED = "a duration: seconds (1.5) or with a unit (250ms, 2s, 1m, 1h, 1m30s)"


class MissingSettingError(ConfigError):
    """A setting without a default was given by none of the three sources."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(names[0], None, "a value")
        self.args = (f"missing required setting {names[0]} (set {', '.join(names)})",)


# ---------------------------------------------------------------------------
# scalar parsers (pure, each raises ConfigError naming ``setting``)
# ---------------------------------------------------------------------------


def parse_bool(text: str, *, setting: str) -> bool:
    """Parse the boolean spellings people put in env vars; case-insensitive."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(setting, text, _BOOL_EXPECTED)


def parse_duration(text: str | float, *, setting: str = "duration") -> float:
    """Seconds from ``"1.5"``, ``"250ms"``, ``"2s"``, ``"1m"``, ``"1h"`` or ``"1m30s"``.

    A bare number means seconds so that plain numbers in TOML work. Negative,
    infinite and NaN durations are refused: they are never what was meant.
    """
    if isinstance(text, bool):
        raise ConfigError(setting, text, _DURATION_EXPECTED)
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip()
        try:
            if not raw.isascii():
                raise ValueError(raw)
            seconds = float(raw)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(raw):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos == 0 or pos != len(raw):
                raise ConfigError(setting, text, _DURATION_EXPECTED) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(setting, text, "a duration that is finite and not negative")
    return seconds


def read_toml(path: Path, *, setting: str) -> dict[str, Any]:
    """Read a TOML file; a missing, unreadable or malformed file is a ``ConfigError``.

    tomllib (and the datetime it pulls in) is imported here, not at module level: the
    serving process of a sidecar gets its parsed config and never reads TOML at idle.
    """
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(setting, str(path), f"a readable TOML file; {reason}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(setting, str(path), f"valid TOML; {exc}") from None


# ---------------------------------------------------------------------------
# field descriptions
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    tp: Any  # the type without ``| None``
    optional: bool
    meta: Mapping[str, Any]
    required: bool


def setting_names(name: str, prefix: str, meta: Mapping[str, Any] | None = None) -> list[str]:
    """How a user spells field ``name`` in each source: flag, env var, config key."""
    flag = (meta or {}).get("flag") or "--" + name.replace("_", "-")
    return [flag, f"{prefix}_{name.upper()}", f"config file key {name}"]


def _fields(cls: type[Any]) -> dict[str, _Field]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out: dict[str, _Field] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        optional = False
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                raise TypeError(f"setting {f.name}: unsupported type {tp!r}")
            optional, tp = True, members[0]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = _Field(f.name, tp, optional, f.metadata, required)
    return out


def _describe(field: _Field) -> str:
    """What the user should have written, for the ``expected`` part of errors."""
    tp = field.tp
    if typing.get_origin(tp) is Literal:
        return "one of: " + ", ".join(str(v) for v in typing.get_args(tp))
    if tp is bool:
        return _BOOL_EXPECTED
    if tp is float and field.meta.get("duration"):
        return _DURATION_EXPECTED
    if tp in (int, float):
        noun = "an integer" if tp is int else "a number"
        lo, hi = field.meta.get("min"), field.meta.get("max")
        if lo is not None and hi is not None:
            return f"{noun} between {lo} and {hi}"
        if lo is not None:
            return f"{noun} >= {lo}"
        if hi is not None:
            return f"{noun} <= {hi}"
        return noun
    if tp is HostPort:
        return "host:port"
    if tp is Path:
        return "a path"
    if typing.get_origin(tp) is list:
        return "a list of strings"
    return "a string"


def _check_bounds(field: _Field, value: float, setting: str, raw: object) -> None:
    lo, hi = field.meta.get("min"), field.meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(setting, raw, _describe(field))


def _from_text(field: _Field, text: str, setting: str) -> object:
    """Convert text (a flag's or env var's value) to the field's type."""
    tp = field.tp
    if tp is str:
        return text
    if tp is bool:
        return parse_bool(text, setting=setting)
    if tp is int:
        try:
            if not text.isascii():  # int() would take Arabic-Indic and full-width digits
                raise ValueError(text)
            value = int(text.strip(), 10)
        except ValueError:
            raise ConfigError(setting, text, _describe(field)) from None
        _check_bounds(field, value, setting, text)
        return value
    if tp is float:
        if field.meta.get("duration"):
            fvalue = parse_duration(text, setting=setting)
        else:
            try:
                if not text.isascii():
                    raise ValueError(text)
                fvalue = float(text.strip())
            except ValueError:
                raise ConfigError(setting, text, _describe(field)) from None
            if not math.isfinite(fvalue):
                raise ConfigError(setting, text, "a finite number")
        _check_bounds(field, fvalue, setting, text)
        return fvalue
    if tp is Path:
        if not text.strip():
            raise ConfigError(setting, text, "a non-empty path")
        try:
            return Path(text.strip()).expanduser()
        except RuntimeError:  # "~user" naming a user that does not exist
            raise ConfigError(setting, text, "a path (~ only for an existing user)") from None
    if tp is HostPort:
        return parse_host_port(
            text, setting=setting, default_host=field.meta.get("default_host", "127.0.0.1")
        )
    if typing.get_origin(tp) is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if typing.get_origin(tp) is Literal:
        return _literal(field, text, setting)
    raise TypeError(f"setting {field.name}: unsupported type {tp!r}")


def _literal(field: _Field, value: object, setting: str) -> object:
    choices = typing.get_args(field.tp)
    for choice in choices:
        if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
            return choice
    if isinstance(value, str):
        # Case-insensitive as a courtesy (INFO for info), but only if unambiguous.
        folded = [c for c in choices if str(c).lower() == value.strip().lower()]
        if len(folded) == 1:
            return folded[0]
    raise ConfigError(setting, value, _describe(field))


def _from_value(field: _Field, value: object, setting: str) -> object:
    """Convert an already-typed value (TOML, or a typed CLI option) to the field's type."""
    tp = field.tp
    if isinstance(value, str) and tp is not str and typing.get_origin(tp) is not list:
        return _from_text(field, value, setting)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(setting, value, "a boolean: true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(setting, value, _describe(field))
        _check_bounds(field, value, setting, value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(setting, value, _describe(field))
        fvalue = float(value)
        if not math.isfinite(fvalue) or (field.meta.get("duration") and fvalue < 0):
            raise ConfigError(setting, value, _describe(field))
        _check_bounds(field, fvalue, setting, value)
        return fvalue
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(setting, value, "a string")
        return value
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            return _from_text(field, value, setting)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(setting, value, "a list of strings")
        return list(value)
    if tp is Path and isinstance(value, Path):
        return value
    if tp is HostPort and isinstance(value, HostPort):
        return value
    if typing.get_origin(tp) is Literal:
        return _literal(field, value, setting)
    raise ConfigError(setting, value, _describe(field))


def _given_on_cli(value: object) -> bool:
    # typer hands an empty tuple/list for a repeatable option that was not used.
    return value is not None and not (isinstance(value, list | tuple) and len(value) == 0)


def load_settings(
    cls: type[T],
    *,
    prefix: str,
    cli: Mapping[str, object],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    section: str | None = None,
    config_setting: str = "--config",
) -> T:
    """Build ``cls`` from CLI values, the environment, a TOML file and defaults.

    ``cli`` maps field names to the values typer parsed (``None`` = flag not
    given). The environment variable of field ``listen`` is ``<PREFIX>_LISTEN``;
    an empty value means "unset" for an ``X | None`` field. ``section`` selects
    a table of the TOML file (so one file can configure several sidecars); a
    missing table counts as empty. Unknown keys in the file are errors; unknown
    environment variables are not (Kubernetes injects ``<SERVICE>_PORT`` and
    friends on its own). ``config_setting`` names the file in its own errors.
    Without ``config_file``, the file named by ``<PREFIX>_CONFIG`` is read (if
    set and non-empty, and ``cls`` has no field called ``config``).
    """
    env = os.environ if env is None else env
    fields = _fields(cls)
    unknown_cli = set(cli) - set(fields)
    if unknown_cli:
        raise TypeError(f"load_settings: no such setting(s) {sorted(unknown_cli)} in {cls!r}")

    config_env = f"{prefix}_CONFIG"
    if config_file is None and "config" not in fields and env.get(config_env, "").strip():
        config_file, config_setting = Path(env[config_env].strip()), config_env

    file_values: dict[str, object] = {}
    key_prefix = f"{section}." if section else ""
    if config_file is not None:
        data: object = read_toml(config_file, setting=config_setting)
        if section is not None and isinstance(data, dict):
            data = data.get(section, {})
        if not isinstance(data, dict):
            raise ConfigError(config_setting, str(config_file), f"a table [{section}]")
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(
                    f"config file {config_file}", key_prefix + key, _known_keys(key, fields)
                )
            file_values[name] = value

    values: dict[str, object] = {}
    for name, field in fields.items():
        flag, env_name, _ = setting_names(name, prefix, field.meta)
        cli_value = cli.get(name)
        if _given_on_cli(cli_value):
            values[name] = _from_value(field, cli_value, flag)
        elif env_name in env:
            text = env[env_name]
            if field.optional and not text.strip():
                values[name] = None
            else:
                values[name] = _from_text(field, text, env_name)
        elif name in file_values:
            setting = f"config file key {key_prefix}{name}"
            values[name] = _from_value(field, file_values[name], setting)
        elif field.required:
            raise MissingSettingError(setting_names(name, prefix, field.meta))
    return cls(**values)


def _known_keys(key: str, fields: Mapping[str, _Field]) -> str:
    import difflib  # only on this error path

    names = sorted(fields)
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"a known key; {hint}known keys: {', '.join(names)}"


def describe_settings(cls: type[Any], prefix: str) -> list[tuple[str, str, str, str]]:
    """(flag, env var, type description, help) of each field, for docs and tests."""
    rows = []
    for name, field in _fields(cls).items():
        flag, env_name, _ = setting_names(name, prefix, field.meta)
        rows.append((flag, env_name, _describe(field), str(field.meta.get("help", ""))))
    return rows
