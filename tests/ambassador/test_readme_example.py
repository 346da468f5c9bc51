"""The README's ambassador config example is a real, valid config (so the docs cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trustme

ROOT = Path(__file__).resolve().parents[2]


def test_readme_toml_example_passes_ambassador_check(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert match is not None, "the README lost its TOML example"
    # The example names files a pod would mount; put real ones in their place.
    (tmp_path / "environment").write_text("dev\n")
    (tmp_path / "authorization").write_text("Bearer x\n")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    config = match.group(1)
    for mounted, local in {
        "/etc/env-switch/environment": tmp_path / "environment",
        "/etc/pg-ca/ca.crt": tmp_path / "ca.crt",
        "/etc/api-token/authorization": tmp_path / "authorization",
    }.items():
        assert mounted in config
        config = config.replace(mounted, str(local))
    path = tmp_path / "ambassador.toml"
    path.write_text(config)
    ambassador = Path(sys.executable).parent / "ambassador"
    res = subprocess.run(
        [str(ambassador), "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "listener postgres: 127.0.0.1:5432 protocol=postgres" in res.stdout
    assert "listener api: 127.0.0.1:8080 protocol=http" in res.stdout
    assert "current: dev (from env_file)" in res.stdout
    assert "[tls sslmode=verify-full" in res.stdout
    assert "etcd http://etcd.platform:2379 prefix /services/api environment=prod" in res.stdout
