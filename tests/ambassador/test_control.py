"""The steps the single process and the ``--workers`` supervisor share (``ambassador.control``).

Real sockets on 127.0.0.1 for binding, real files for the watches and reloads;
the switch bookkeeping is checked through a real registry's exposition.
"""

from __future__ import annotations

import logging
import socket
import tomllib
from pathlib import Path

import pytest
import trio

from ambassador import control
from ambassador.config import AmbassadorConfig, parse_config
from ambassador.switch import EnvSwitch
from sidecar_common.errors import ConfigError
from sidecar_common.metrics import Registry, parse_text

log = logging.getLogger("test.control")


def _config(*listens: str, config_file: Path | None = Path("a.toml")) -> AmbassadorConfig:
    text = "".join(
        f'[[listeners]]\nname = "l{i}"\nlisten = "{listen}"\n'
        f'[listeners.environments.prod]\nendpoints = ["127.0.0.1:9"]\n'
        for i, listen in enumerate(listens)
    )
    return parse_config(tomllib.loads(text), config_file=config_file)


def test_one_copy_binds_each_listener_once() -> None:
    (bound,) = control.bind_listeners(_config("127.0.0.1:0", "127.0.0.1:0"))
    try:
        assert sorted(bound) == ["l0", "l1"]
        assert all(len(group) == 1 for group in bound.values())
        assert not bound["l0"][0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        for group in bound.values():
            for s in group:
                s.close()


def test_copies_share_one_port_with_reuseport() -> None:
    copies = control.bind_listeners(_config("127.0.0.1:0"), copies=3)
    try:
        ports = {c["l0"][0].getsockname()[1] for c in copies}
        assert len(copies) == 3 and len(ports) == 1
        assert all(c["l0"][0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for c in copies)
    finally:
        for c in copies:
            c["l0"][0].close()


@pytest.mark.parametrize("copies", [1, 2])
def test_busy_address_names_the_setting_and_closes_what_was_bound(
    copies: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    opened: list[socket.socket] = []
    real_socket = socket.socket

    def tracking_socket(*args: object, **kwargs: object) -> socket.socket:
        s = real_socket(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(s)
        return s

    monkeypatch.setattr(socket, "socket", tracking_socket)
    try:
        with pytest.raises(ConfigError) as info:
            control.bind_listeners(_config("127.0.0.1:0", f"127.0.0.1:{port}"), copies=copies)
    finally:
        monkeypatch.undo()
        busy.close()
    assert "listeners[1].listen" in str(info.value)
    assert opened and all(s.fileno() == -1 for s in opened)


def test_apply_switch_counts_every_request_and_current_env_follows() -> None:
    registry = Registry()
    switch = EnvSwitch(("prod", "dev"), "prod")
    counter = control.register_switch_metrics(registry, lambda: switch)
    assert control.apply_switch(switch, counter, log, "dev", "admin").changed
    assert control.apply_switch(switch, counter, log, "nope", "admin").refused
    values = parse_text(registry.render())
    switches = "ambassador_env_switches_total"
    assert values[(switches, frozenset({("result", "switched"), ("source", "admin")}))] == 1
    assert values[(switches, frozenset({("result", "refused"), ("source", "admin")}))] == 1
    assert values[("ambassador_current_env", frozenset({("env", "dev")}))] == 1
    assert values[("ambassador_current_env", frozenset({("env", "prod")}))] == 0


def test_no_current_env_samples_without_a_switch() -> None:
    registry = Registry()
    control.register_switch_metrics(registry, lambda: None)
    assert not any(name == "ambassador_current_env" for name, _ in parse_text(registry.render()))


async def test_env_file_choice_and_config_reload(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    assert await control.read_env_choice(env_file, "prod", log) is None  # missing
    env_file.write_text("dev\n")
    assert await control.read_env_choice(env_file, "prod", log) == "dev"
    cfg_file = tmp_path / "a.toml"
    cfg_file.write_text('[[listeners]]\nname = "x"\nlisten = "127.0.0.1:1"\n[listeners.environ')
    assert await control.reload_config(cfg_file, {}, log) is None  # bad TOML: refused
    cfg_file.write_text(
        '[[listeners]]\nname = "x"\nlisten = "127.0.0.1:1"\n'
        '[listeners.environments.prod]\nendpoints = ["127.0.0.1:9"]\n'
    )
    new = await control.reload_config(cfg_file, {"env": "prod"}, log)
    assert new is not None and new.env == "prod" and new.listeners[0].name == "x"


async def test_watch_file_calls_back_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "watched"
    path.write_text("a")
    seen = trio.Event()

    async def changed() -> None:
        seen.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(control.watch_file, path, changed)
        path.write_text("bb")
        with trio.fail_after(5):
            await seen.wait()
        nursery.cancel_scope.cancel()
