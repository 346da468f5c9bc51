"""``sidecar_common.leanstart``: OpenSSL's modules deferred, in fresh interpreters.

Each test runs a new ``python -P`` (the test process itself has ``ssl`` loaded
long ago): a placeholder must behave as the module it stands for, load it on
the first attribute read and never before, and ``python -m
sidecar_common.leanstart MODULE ARGS`` must run MODULE as ``python -m`` would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_deferred_module_loads_on_the_first_attribute_read_and_then_is_the_real_one() -> None:
    res = run_python(
        """
        import json, sys
        from sidecar_common.leanstart import DeferredModule, defer
        out = {"deferred": defer(["ssl", "no_such_module_xyz", "json"])}
        import ssl                       # the placeholder: nothing of OpenSSL yet
        early = ssl
        out["after_import"] = [type(ssl).__name__, "_ssl" in sys.modules]
        from ssl import SSLContext       # the first read loads the real module
        out["after_read"] = [
            "_ssl" in sys.modules,
            type(sys.modules["ssl"]).__name__,
            early.SSLContext is SSLContext,
            early.create_default_context().verify_mode == early.CERT_REQUIRED,
            early.__spec__.name,
        ]
        try:
            import no_such_module_xyz
        except ModuleNotFoundError as exc:
            out["missing"] = exc.name
        print(json.dumps(out))
        """
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # A module Python cannot find and one already imported are left alone.
    assert out["deferred"] == ["ssl"]
    assert out["after_import"] == ["DeferredModule", False]
    assert out["after_read"] == [True, "module", True, True, "ssl"]
    assert out["missing"] == "no_such_module_xyz"


def test_trio_imports_without_loading_openssl_and_tls_still_works() -> None:
    res = run_python(
        """
        import sys
        from sidecar_common.leanstart import DEFERRED, defer
        defer(DEFERRED)
        import trio
        loaded = sorted(m for m in ("_ssl", "_hashlib") if m in sys.modules)
        maps = open("/proc/self/maps").read()
        print("after trio:", loaded, "libcrypto" in maps)
        # trio took its references before the load: they work once loaded.
        import trio.testing
        ctx = trio._ssl._stdlib_ssl.create_default_context()
        stream = trio.SSLStream(trio.testing.MemorySendStream(), ctx, server_hostname="x")
        print("after use:", "_ssl" in sys.modules, type(stream).__name__)
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["after trio: [] False", "after use: True SSLStream"]


def test_main_runs_the_module_as_main_with_its_arguments(tmp_path: Path) -> None:
    doc = tmp_path / "doc.json"
    doc.write_text('{"b": 1, "a": [2]}')
    argv = ["-m", "sidecar_common.leanstart", "json.tool", "--sort-keys", str(doc)]
    res = subprocess.run([sys.executable, "-P", *argv], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"a": [2], "b": 1}
    assert res.stdout.startswith('{\n    "a"')  # --sort-keys reached json.tool


@pytest.mark.parametrize("args", [[], ["--run", "3"]])
def test_main_without_a_module_is_one_line_and_exit_2(args: list[str]) -> None:
    res = subprocess.run(
        [sys.executable, "-P", "-m", "sidecar_common.leanstart", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "leanstart: error: usage: python -m sidecar_common.leanstart MODULE ..."
    ]
