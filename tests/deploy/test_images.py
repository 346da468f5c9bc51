"""The sidecar images (images/*.Dockerfile), checked without a Docker engine.

There is no daemon on these machines, so nothing is built here; instead: hadolint on each
Dockerfile; the Dockerfile's structure (multi-stage, pinned slim base, wheel-only install
without caches or build tools, numeric non-root USER, OCI labels); the ENTRYPOINT is the
exec-form console script that pyproject declares and the venv has installed; and every
flag the Kubernetes manifests pass to a sidecar is one its real CLI lists in ``run --help``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from importlib.metadata import entry_points

import pytest

from tests.deploy.k8s import (
    IMAGES,
    OVERLAYS,
    ROOT,
    SIDECARS,
    VENV_BIN,
    Instruction,
    container,
    exec_form,
    flags,
    labels,
    objects,
    parse_dockerfile,
    pod_spec,
    stages,
    tools,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
# Pinned by full version tag (not 3.11-slim, which moves): a rebuild gets the same base
# until someone bumps it on purpose.
BASE_IMAGE = re.compile(r"python:3\.11\.\d+-slim(-[a-z]+)?")


def dockerfile(sidecar: str) -> list[Instruction]:
    return parse_dockerfile((IMAGES / f"{sidecar}.Dockerfile").read_text(encoding="utf-8"))


def final_stage(sidecar: str) -> list[Instruction]:
    return stages(dockerfile(sidecar))[-1]


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_hadolint_clean(sidecar: str) -> None:
    path = IMAGES / f"{sidecar}.Dockerfile"
    proc = subprocess.run(
        [str(tools().hadolint), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_multi_stage_build_installs_only_the_wheels(sidecar: str) -> None:
    groups = stages(dockerfile(sidecar))
    assert len(groups) >= 2, "a builder stage and a final stage"
    builder, final = groups[0], groups[-1]
    builder_from = builder[0].args.split()
    assert builder_from[-2:] == ["AS", "builder"], builder[0]
    for stage in (builder, final):
        image = stage[0].args.split()[0]
        assert BASE_IMAGE.fullmatch(image), f"{image}: python:3.11.X-slim, pinned by tag"
    builder_runs = " ".join(i.args for i in builder if i.keyword == "RUN")
    assert "pip wheel" in builder_runs and "--wheel-dir /wheels" in builder_runs
    # The final stage copies no sources and installs from the builder's wheels only,
    # through a bind mount (no layer keeps a wheel), with no cache and no index.
    assert not [i for i in final if i.keyword in ("COPY", "ADD")], "the final stage copies nothing"
    runs = [i.args for i in final if i.keyword == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1, runs
    install = installs[0]
    assert "--mount=type=bind,from=builder,source=/wheels" in install
    for option in ("--no-cache-dir", "--no-index", "--find-links=/wheels"):
        assert option in install, f"pip install {option}"
    assert re.search(r"/wheels/sidecars-\*\.whl", install), "installs the project's wheel"
    # No build tools in the final stage: nothing installed from apt, no compiler, and
    # the Python installers removed once they have done their job.
    final_text = " ".join(runs)
    for tool in ("apt-get", "apt ", "gcc", "build-essential", "git "):
        assert tool not in final_text, f"{tool.strip()} in the final stage"
    assert re.search(r"pip uninstall --yes setuptools wheel pip", final_text)


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_user_is_numeric_and_not_root(sidecar: str) -> None:
    users = [i.args for i in final_stage(sidecar) if i.keyword == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_entrypoint_is_the_exec_form_console_script(sidecar: str) -> None:
    entrypoints = [i for i in final_stage(sidecar) if i.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    argv = exec_form(entrypoints[0].args)
    assert argv == [sidecar], f"exec form naming the console script: {entrypoints[0].args}"
    # Declared in pyproject and installed (the venv is installed from the same pyproject,
    # as the image is from its wheel).
    assert sidecar in SCRIPTS, f"{sidecar} not in [project.scripts]"
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert installed.get(sidecar) == SCRIPTS[sidecar], "installed entry point = pyproject's"
    assert os.access(VENV_BIN / sidecar, os.X_OK), f".venv/bin/{sidecar} is not installed"
    # CMD, when present, is exec form too (no shell), so `docker run IMAGE` shows help.
    for cmd in (i for i in final_stage(sidecar) if i.keyword == "CMD"):
        assert exec_form(cmd.args) is not None, cmd


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_final_stage_writes_the_bytecode_the_serving_process_reads(sidecar: str) -> None:
    """The serving process runs -OO (leanexec.LEAN_OPTIMIZE), so it reads *.opt-2.pyc.

    The install step writes them with sidecar_common.precompile (tests/common/
    test_precompile.py runs it), at -OO, with bytecode writes allowed for that one
    command (the image sets PYTHONDONTWRITEBYTECODE).
    """
    final_text = " ".join(i.args for i in final_stage(sidecar) if i.keyword == "RUN")
    assert "env -u PYTHONDONTWRITEBYTECODE python -OO -m sidecar_common.precompile" in final_text


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_oci_labels(sidecar: str) -> None:
    found = labels(final_stage(sidecar))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert found.get(f"org.opencontainers.image.{key}"), f"label {key}"
    assert found["org.opencontainers.image.title"] == f"sidecars-{sidecar}"
    assert found["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_builder_copies_what_the_wheel_is_built_from(sidecar: str) -> None:
    """The builder must COPY everything setuptools packs, and .dockerignore must let it in."""
    builder = stages(dockerfile(sidecar))[0]
    copied = {
        src.rstrip("/")
        for i in builder
        if i.keyword == "COPY"
        for src in i.args.split()[:-1]
        if not src.startswith("--")
    }
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed = {"pyproject.toml", "setup.py", PYPROJECT["project"]["readme"], *packages}
    assert needed <= copied, f"not copied: {needed - copied}"
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert needed <= allowed, f"excluded by .dockerignore: {needed - allowed}"


def _help(sidecar: str) -> str:
    env = {**os.environ, "COLUMNS": "300", "TERM": "dumb", "NO_COLOR": "1"}
    proc = subprocess.run(
        [str(VENV_BIN / sidecar), "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, (
        f"`{sidecar} run --help` exited {proc.returncode}: {proc.stderr.strip()[:500]}"
    )
    # A typer app with a single command runs it for any arguments: make sure `run` itself
    # answered (until the CLIs land, the placeholder `version` command does).
    assert re.search(rf"Usage: {sidecar} run\b", proc.stdout), (
        f"`{sidecar} run --help` is not the help of a `run` command:\n{proc.stdout[:300]}"
    )
    return proc.stdout


@pytest.mark.parametrize("sidecar", SIDECARS)
def test_manifest_flags_exist_in_the_cli(sidecar: str) -> None:
    """Every flag the manifests pass is one the real CLI knows (and `run` is a subcommand)."""
    used: set[str] = set()
    for overlay in ("base", *OVERLAYS):
        args = container(pod_spec(objects(overlay)), sidecar).get("args", [])
        assert args[:1] == ["run"], f"{overlay}: {sidecar} args start with `run`"
        used.update(flags(args))
    assert used, f"the manifests pass {sidecar} no flags"
    text = _help(sidecar)
    missing = sorted(f for f in used if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert not missing, f"`{sidecar} run --help` does not list {missing}"
