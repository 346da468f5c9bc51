"""settings: every type from every source, precedence, and errors naming setting+value+expected.

Tables run in-process against ``load_settings``; the last tests run a real typer
app (tests/common/settings_app.py) in a subprocess to check what a user sees:
exit status 2 and exactly one line on stderr, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import HostPort
from sidecar_common.settings import (
    MissingSettingError,
    describe_settings,
    load_settings,
    parse_bool,
    parse_duration,
    read_toml,
)

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("settings_app.py")
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


@dataclass
class S:
    name: str = "sidecar"
    workers: int = field(default=4, metadata={"min": 1, "max": 64, "help": "worker count"})
    ratio: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    timeout: float = field(default=5.0, metadata={"duration": True})
    verbose: bool = False
    state_dir: Path = Path("/var/lib/sidecar")
    listen: HostPort = field(default=HostPort("127.0.0.1", 8080))
    public: HostPort = field(default=HostPort("0.0.0.0", 80), metadata={"default_host": "0.0.0.0"})
    allow: list[str] = field(default_factory=list)
    mode: Literal["tcp", "http"] = "tcp"
    upstream: HostPort | None = None
    admin_port: int = field(default=9901, metadata={"flag": "--admin"})


def load(
    cli: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
    section: str | None = None,
) -> S:
    config = None
    if toml is not None:
        assert tmp_path is not None
        config = tmp_path / "sidecar.toml"
        config.write_text(toml)
    return load_settings(
        S, prefix="AMBASSADOR", cli=cli or {}, env=env or {}, config_file=config, section=section
    )


def test_defaults_when_no_source_sets_anything() -> None:
    assert load() == S()


# (field, env text, expected value)
ENV_CASES: list[tuple[str, str, Any]] = [
    ("name", "proxy-1", "proxy-1"),
    ("name", "", ""),
    ("workers", "12", 12),
    ("workers", " 64 ", 64),
    ("ratio", "0.25", 0.25),
    ("ratio", "1", 1.0),
    ("timeout", "250ms", 0.25),
    ("timeout", "2s", 2.0),
    ("timeout", "1.5", 1.5),
    ("timeout", "1m30s", 90.0),
    ("verbose", "1", True),
    ("verbose", "0", False),
    ("verbose", "true", True),
    ("verbose", "FALSE", False),
    ("verbose", "yes", True),
    ("verbose", "no", False),
    ("verbose", "On", True),
    ("verbose", "off", False),
    ("state_dir", "/tmp/x", Path("/tmp/x")),
    ("listen", "0.0.0.0:15001", HostPort("0.0.0.0", 15001)),
    ("listen", ":15001", HostPort("127.0.0.1", 15001)),
    ("listen", "[::1]:15001", HostPort("::1", 15001)),
    ("public", ":443", HostPort("0.0.0.0", 443)),
    ("allow", "10.0.0.0/8, 192.168.0.0/16,,", ["10.0.0.0/8", "192.168.0.0/16"]),
    ("allow", "", []),
    ("mode", "http", "http"),
    ("mode", "HTTP", "http"),
    ("upstream", "db:5432", HostPort("db", 5432)),
    ("upstream", "", None),
    ("admin_port", "9000", 9000),
]


@pytest.mark.parametrize(("name", "text", "expected"), ENV_CASES)
def test_each_type_from_env(name: str, text: str, expected: object) -> None:
    settings = load(env={f"AMBASSADOR_{name.upper()}": text})
    assert getattr(settings, name) == expected


# (field, TOML value literal, expected value)
TOML_CASES: list[tuple[str, str, Any]] = [
    ("name", '"proxy-1"', "proxy-1"),
    ("workers", "12", 12),
    ("ratio", "0.25", 0.25),
    ("ratio", "1", 1.0),
    ("timeout", '"250ms"', 0.25),
    ("timeout", "3", 3.0),
    ("timeout", "0.5", 0.5),
    ("verbose", "true", True),
    ("state_dir", '"/tmp/x"', Path("/tmp/x")),
    ("listen", '"0.0.0.0:15001"', HostPort("0.0.0.0", 15001)),
    ("allow", '["10.0.0.0/8", "::1"]', ["10.0.0.0/8", "::1"]),
    ("mode", '"http"', "http"),
    ("upstream", '"db:5432"', HostPort("db", 5432)),
]


@pytest.mark.parametrize(("name", "literal", "expected"), TOML_CASES)
def test_each_type_from_toml(name: str, literal: str, expected: object, tmp_path: Path) -> None:
    settings = load(toml=f"{name} = {literal}\n", tmp_path=tmp_path)
    assert getattr(settings, name) == expected


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("workers", "12", 12),  # declared as str in typer: we parse
        ("workers", 12, 12),  # declared as int in typer: we check bounds
        ("verbose", True, True),
        ("verbose", False, False),  # --no-verbose beats the env
        ("timeout", "100ms", 0.1),
        ("allow", ["a", "b"], ["a", "b"]),
        ("allow", ("a",), ["a"]),
        ("state_dir", Path("/x"), Path("/x")),
        ("mode", "http", "http"),
        ("listen", "[::]:80", HostPort("::", 80)),
    ],
)
def test_each_type_from_cli(name: str, value: object, expected: object) -> None:
    settings = load(cli={name: value}, env={f"AMBASSADOR_{name.upper()}": "1"})
    assert getattr(settings, name) == expected


def test_toml_keys_may_use_dashes(tmp_path: Path) -> None:
    settings = load(toml='state-dir = "/a"\nadmin-port = 1\n', tmp_path=tmp_path)
    assert settings.state_dir == Path("/a")
    assert settings.admin_port == 1


# ---- precedence: CLI > env > file > default --------------------------------

PRECEDENCE = [
    # cli, env, file, expected
    (None, None, None, 4),
    (None, None, 3, 3),
    (None, "2", 3, 2),
    ("1", "2", 3, 1),
    ("1", None, 3, 1),
    ("1", "2", None, 1),
    (None, "2", None, 2),
    ("1", None, None, 1),
]


@pytest.mark.parametrize(("cli", "env", "file", "expected"), PRECEDENCE)
def test_precedence(
    cli: str | None, env: str | None, file: int | None, expected: int, tmp_path: Path
) -> None:
    settings = load(
        cli={"workers": cli},
        env={} if env is None else {"AMBASSADOR_WORKERS": env},
        toml=None if file is None else f"workers = {file}\n",
        tmp_path=tmp_path,
    )
    assert settings.workers == expected


def test_precedence_is_per_field(tmp_path: Path) -> None:
    settings = load(
        cli={"workers": "9", "name": None},
        env={"AMBASSADOR_NAME": "from-env", "AMBASSADOR_MODE": "http"},
        toml='name = "from-file"\nmode = "tcp"\nverbose = true\nworkers = 2\n',
        tmp_path=tmp_path,
    )
    assert (settings.workers, settings.name, settings.mode, settings.verbose) == (
        9,
        "from-env",
        "http",
        True,
    )


def test_empty_cli_sequence_is_not_given() -> None:
    settings = load(cli={"allow": ()}, env={"AMBASSADOR_ALLOW": "x,y"})
    assert settings.allow == ["x", "y"]


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBASSADOR_WORKERS", "33")
    assert load_settings(S, prefix="AMBASSADOR", cli={}).workers == 33


def test_other_prefixes_and_stray_env_vars_are_ignored() -> None:
    # Kubernetes service links inject <SERVICE>_PORT=tcp://...; not ours.
    env = {"ADAPTER_WORKERS": "2", "AMBASSADOR_SERVICE_HOST": "10.0.0.1", "AMBASSADOR_PORT": "x"}
    assert load(env=env) == S()


def test_config_file_from_prefix_config_env(tmp_path: Path) -> None:
    config = tmp_path / "from-env.toml"
    config.write_text("workers = 6\n")
    env = {"AMBASSADOR_CONFIG": str(config)}
    assert load_settings(S, prefix="AMBASSADOR", cli={}, env=env).workers == 6
    # An explicit config_file (the --config flag) wins over the env var.
    other = tmp_path / "flag.toml"
    other.write_text("workers = 7\n")
    assert load_settings(S, prefix="AMBASSADOR", cli={}, env=env, config_file=other).workers == 7
    with pytest.raises(ConfigError) as info:
        load_settings(S, prefix="AMBASSADOR", cli={}, env={"AMBASSADOR_CONFIG": "/nonexistent"})
    assert (info.value.setting, info.value.value) == ("AMBASSADOR_CONFIG", "/nonexistent")


def test_section_selects_a_table(tmp_path: Path) -> None:
    text = "[adapter]\nworkers = 2\n[ambassador]\nworkers = 3\n"
    assert load(toml=text, tmp_path=tmp_path, section="ambassador").workers == 3
    assert load(toml=text, tmp_path=tmp_path, section="watcher") == S()


# ---- errors name the setting as written, the value and what was expected ------

# (field, bad text, fragment of "expected")
BAD_TEXT = [
    ("workers", "many", "an integer between 1 and 64"),
    ("workers", "0", "an integer between 1 and 64"),
    ("workers", "65", "an integer between 1 and 64"),
    ("workers", "1.5", "an integer"),
    ("workers", "\u0663", "an integer"),  # ARABIC-INDIC DIGIT THREE: int() accepts it, we don't
    ("ratio", "half", "a number between 0.0 and 1.0"),
    ("ratio", "1.5", "a number between 0.0 and 1.0"),
    ("ratio", "nan", "a finite number"),
    ("timeout", "5 minutes", "a duration"),
    ("timeout", "-1s", "a duration"),
    ("timeout", "-1", "not negative"),
    ("verbose", "maybe", "a boolean: 1/0, true/false, yes/no or on/off"),
    ("verbose", "", "a boolean"),
    ("state_dir", " ", "a non-empty path"),
    ("listen", "localhost", "host:port"),
    ("listen", "localhost:70000", "a port between 0 and 65535"),
    ("mode", "udp", "one of: tcp, http"),
    ("upstream", "db", "host:port"),
    ("admin_port", "x", "an integer"),
]


def _names(name: str) -> tuple[str, str]:
    flag = "--admin" if name == "admin_port" else "--" + name.replace("_", "-")
    return flag, f"AMBASSADOR_{name.upper()}"


@pytest.mark.parametrize(("name", "text", "expected"), BAD_TEXT)
def test_bad_env_value_names_env_var(name: str, text: str, expected: str) -> None:
    env_name = _names(name)[1]
    with pytest.raises(ConfigError) as info:
        load(env={env_name: text})
    assert (info.value.setting, info.value.value) == (env_name, text)
    assert expected in info.value.expected
    assert str(info.value) == (
        f"invalid value for {env_name}: {text!r} (expected {info.value.expected})"
    )


@pytest.mark.parametrize(("name", "text", "expected"), BAD_TEXT)
def test_bad_cli_value_names_flag(name: str, text: str, expected: str) -> None:
    flag = _names(name)[0]
    with pytest.raises(ConfigError) as info:
        load(cli={name: text}, env={_names(name)[1]: "ignored because the flag wins"})
    assert (info.value.setting, info.value.value) == (flag, text)
    assert expected in info.value.expected


# (field, TOML literal, value as parsed by tomllib, fragment of "expected")
BAD_TOML = [
    ("workers", '"many"', "many", "an integer"),
    ("workers", "0", 0, "an integer between 1 and 64"),
    ("workers", "1.5", 1.5, "an integer"),
    ("workers", "true", True, "an integer"),
    ("ratio", "2", 2, "a number between"),
    ("ratio", "inf", float("inf"), "a number"),
    ("timeout", "-3", -3, "a duration"),
    ("timeout", '"soon"', "soon", "a duration"),
    ("verbose", '"yes please"', "yes please", "a boolean"),
    ("verbose", "1", 1, "a boolean: true or false"),
    ("name", "3", 3, "a string"),
    ("allow", "[1, 2]", [1, 2], "a list of strings"),
    ("listen", "8080", 8080, "host:port"),
    ("mode", '"udp"', "udp", "one of: tcp, http"),
]


@pytest.mark.parametrize(("name", "literal", "value", "expected"), BAD_TOML)
def test_bad_file_value_names_config_key(
    name: str, literal: str, value: object, expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml=f"{name} = {literal}\n", tmp_path=tmp_path)
    assert info.value.setting == f"config file key {name}"
    assert info.value.value == value
    assert expected in info.value.expected


def test_bad_file_value_in_section_names_dotted_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml="[ambassador]\nworkers = -1\n", tmp_path=tmp_path, section="ambassador")
    assert info.value.setting == "config file key ambassador.workers"


def test_unknown_toml_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml="wokers = 3\n", tmp_path=tmp_path)
    err = info.value
    assert err.setting == f"config file {tmp_path / 'sidecar.toml'}"
    assert err.value == "wokers"
    assert "did you mean workers?" in err.expected
    assert "known keys: admin_port, allow," in err.expected


def test_unknown_key_in_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml="[ambassador]\nzzz = 1\n", tmp_path=tmp_path, section="ambassador")
    assert info.value.value == "ambassador.zzz"


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(toml="ambassador = 3\n", tmp_path=tmp_path, section="ambassador")
    assert info.value.setting == "--config"
    assert "a table [ambassador]" in info.value.expected


def test_a_flag_value_is_not_checked_against_a_bad_env_value() -> None:
    # The env var is shadowed by the flag, so its bad value does not matter.
    assert load(cli={"workers": "2"}, env={"AMBASSADOR_WORKERS": "bad"}).workers == 2


@dataclass
class Required:
    upstream: HostPort
    token: str | None = None


def test_missing_required_setting_names_every_way_to_set_it() -> None:
    with pytest.raises(MissingSettingError) as info:
        load_settings(Required, prefix="WATCHER", cli={}, env={})
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == (
        "missing required setting --upstream "
        "(set --upstream, WATCHER_UPSTREAM, config file key upstream)"
    )


def test_unknown_cli_name_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_settings(S, prefix="AMBASSADOR", cli={"nope": 1}, env={})


# ---- helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@given(ms=st.integers(0, 10**9))
def test_parse_duration_milliseconds_property(ms: int) -> None:
    assert parse_duration(f"{ms}ms") == pytest.approx(ms / 1000)


@given(name=st.sampled_from(sorted(S.__dataclass_fields__)), text=st.text(max_size=40))
def test_any_env_text_either_parses_or_raises_config_error(name: str, text: str) -> None:
    env_name = _names(name)[1]
    try:
        load(env={env_name: text})
    except ConfigError as err:
        assert (err.setting, err.value) == (env_name, text)


@pytest.mark.parametrize("bad", ["", "s", "5x", "5 s", "1m 30s", "ms5", "-5", "inf", "nan", True])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(bad, setting="--timeout")
    assert info.value.setting == "--timeout"
    assert info.value.value == bad


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("YES", True), ("off", False), (" false ", False)]
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text, setting="X") is value


def test_read_toml_errors_name_the_file_setting(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        read_toml(missing, setting="--config")
    assert (info.value.setting, info.value.value) == ("--config", str(missing))
    assert "No such file or directory" in info.value.expected

    bad = tmp_path / "bad.toml"
    bad.write_text("workers = = 3\n")
    with pytest.raises(ConfigError) as info:
        read_toml(bad, setting="WATCHER_CONFIG")
    assert info.value.setting == "WATCHER_CONFIG"
    assert "valid TOML" in info.value.expected and "line 1" in info.value.expected

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError):
        read_toml(binary, setting="--config")

    with pytest.raises(ConfigError) as info:
        read_toml(tmp_path, setting="--config")  # a directory
    assert "readable" in info.value.expected


def test_describe_settings_lists_flag_env_and_help() -> None:
    rows = {row[0]: row for row in describe_settings(S, "AMBASSADOR")}
    assert rows["--workers"] == (
        "--workers",
        "AMBASSADOR_WORKERS",
        "an integer between 1 and 64",
        "worker count",
    )
    assert rows["--admin"][1] == "AMBASSADOR_ADMIN_PORT"


# ---- what a user sees: a real process ---------------------------------------


def run_app(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
    return subprocess.run(
        [PYTHON, str(APP), *args],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_app_loads_all_three_sources(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('workers = 3\nlog_level = "debug"\nverbose = true\n')
    proc = run_app(
        ["--listen", "[::1]:7000", "--config", str(config)],
        env={"AMBASSADOR_WORKERS": "5", "AMBASSADOR_DRAIN_DEADLINE": "1m"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "listen": "[::1]:7000",
        "workers": 5,
        "verbose": True,
        "log_level": "debug",
        "drain_deadline": 60.0,
    }


@pytest.mark.parametrize(
    ("args", "env", "config_text", "message"),
    [
        (
            ["--listen", "localhost"],
            {},
            None,
            "settings_app: error: invalid value for --listen: 'localhost' "
            "(expected host:port, [ipv6]:port or :port with a port 0-65535)",
        ),
        (
            [],
            {"AMBASSADOR_WORKERS": "lots"},
            None,
            "settings_app: error: invalid value for AMBASSADOR_WORKERS: 'lots' "
            "(expected an integer between 1 and 64)",
        ),
        (
            [],
            {"AMBASSADOR_VERBOSE": "sure"},
            None,
            "settings_app: error: invalid value for AMBASSADOR_VERBOSE: 'sure' "
            "(expected a boolean: 1/0, true/false, yes/no or on/off)",
        ),
        (
            [],
            {},
            "workers = 100\n",
            "settings_app: error: invalid value for config file key workers: 100 "
            "(expected an integer between 1 and 64)",
        ),
        (
            [],
            {},
            'drain_deadline = "forever"\n',
            "settings_app: error: invalid value for config file key drain_deadline: 'forever' "
            "(expected a duration: seconds (1.5) or with a unit (250ms, 2s, 1m, 1h, 1m30s))",
        ),
        (["--bogus-flag"], {}, None, "settings_app: error: No such option: --bogus-flag"),
    ],
    ids=["bad-flag", "bad-env-int", "bad-env-bool", "bad-file-int", "bad-file-duration", "bogus"],
)
def test_app_bad_input_exits_2_with_one_line(
    args: list[str],
    env: dict[str, str],
    config_text: str | None,
    message: str,
    tmp_path: Path,
) -> None:
    if config_text is not None:
        config = tmp_path / "c.toml"
        config.write_text(config_text)
        args = [*args, "--config", str(config)]
    proc = run_app(args, env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith(message)


def test_app_unknown_key_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("listen_addr = ':1'\n")
    proc = run_app(["--config", str(config)])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"config file {config}: 'listen_addr'" in proc.stderr

    proc = run_app(["--config", str(tmp_path / "none.toml")])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "invalid value for --config:" in proc.stderr
