"""The pure helpers of the deployment tests, tested alone, so the checks built on them
(Dockerfile structure, overlay differences, resource sizes) catch what they claim."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.deploy.k8s import (
    classify,
    diff,
    exec_form,
    flag_value,
    flags,
    labels,
    normalise,
    overlay_differences,
    parse_dockerfile,
    quantity,
    stages,
    strip_hash,
)

DOCKERFILE = """\
# syntax=docker/dockerfile:1.7
FROM python:3.11.14-slim-bookworm AS builder
RUN python -m pip wheel \\
    # a comment inside a continuation is dropped, as Docker does
    --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
LABEL a.b="one two" \\
      c="x\\"y"
USER 10001:10001
ENTRYPOINT ["ambassador"]
CMD --help
"""


def test_parse_dockerfile_joins_continuations_and_drops_comments() -> None:
    ins = parse_dockerfile(DOCKERFILE)
    assert [(i.keyword, i.line) for i in ins] == [
        ("FROM", 2),
        ("RUN", 3),
        ("FROM", 7),
        ("LABEL", 8),
        ("USER", 10),
        ("ENTRYPOINT", 11),
        ("CMD", 12),
    ]
    assert ins[1].args == "python -m pip wheel --wheel-dir /wheels ."
    groups = stages(ins)
    assert [len(g) for g in groups] == [2, 5]
    assert labels(groups[1]) == {"a.b": "one two", "c": 'x\\"y'}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ('["ambassador"]', ["ambassador"]),
        ('["watcher", "run"]', ["watcher", "run"]),
        ("watcher run", None),  # shell form: /bin/sh -c would be PID 1
        ("[]", None),
        ('["a", 1]', None),
        ('{"a": 1}', None),
    ],
)
def test_exec_form(args: str, expected: list[str] | None) -> None:
    assert exec_form(args) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100m", Decimal("0.1")),
        ("1", Decimal(1)),
        (2, Decimal(2)),
        ("0.5", Decimal("0.5")),
        ("64Mi", Decimal(64 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("128M", Decimal(128 * 10**6)),
    ],
)
def test_quantity(text: str | int, expected: Decimal) -> None:
    assert quantity(text) == expected


@pytest.mark.parametrize("bad", ["", "Mi", "1Xi", "-1", "1e3"])
def test_quantity_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        quantity(bad)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ambassador-config-m4d84cb8ch", "ambassador-config"),
        ("env-switch", "env-switch"),
        ("app", "app"),
    ],
)
def test_strip_hash(name: str, expected: str) -> None:
    assert strip_hash(name) == expected


def test_flags_and_values() -> None:
    args = ["run", "--admin=0.0.0.0:9101", "--env-file", "/x", "--field=a=b"]
    assert flags(args) == ["--admin", "--env-file", "--field"]
    assert flag_value(args, "--admin") == "0.0.0.0:9101"
    assert flag_value(args, "--env-file") == "/x"
    assert flag_value(args, "--field") == "a=b"


def test_diff_matches_named_lists_by_name_and_toml_by_content() -> None:
    a = {
        "containers": [{"name": "x", "image": "i:1"}, {"name": "y", "image": "j:1"}],
        "data": {"c.toml": "# comment\nk = 1\n", "plain": "a"},
    }
    b = {
        "containers": [{"name": "y", "image": "j:2"}, {"name": "x", "image": "i:1"}],
        "data": {"c.toml": "k = 1  # other layout\n", "plain": "b"},
    }
    assert sorted(diff(a, b)) == [
        "containers[name=y].image",
        "containers[order]",
        "data.plain",
    ]
    assert list(diff({"l": [1, 2]}, {"l": [1, 2, 3]})) == ["l[len]"]
    assert list(diff({"a": 1}, {"a": "1"})) == ["a"]
    assert list(diff({"a": 1}, {"b": 1})) == ["a", "b"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("ConfigMap/env-switch.data.environment", "the environment switch"),
        (
            "ConfigMap/ambassador-config.data.ambassador.toml.listeners[name=postgres]"
            ".environments.prod[0]",
            "backend addresses",
        ),
        (
            "ConfigMap/ambassador-config.data.ambassador.toml.listeners[name=redis]"
            ".environments.test[len]",
            "backend addresses",
        ),
        (
            "ConfigMap/ambassador-config.data.ambassador.toml.listeners[name=redis]"
            ".environments.test.endpoints[1]",
            "backend addresses",
        ),
        ("Deployment/app.spec.replicas", "replicas"),
        (
            "Deployment/app.spec.template.spec.initContainers[name=adapter].resources.limits.cpu",
            "resources",
        ),
        ("Deployment/app.spec.template.spec.containers[name=app].resources.requests", "resources"),
        # Not allowed: everything else.
        ("ConfigMap/ambassador-config.data.ambassador.toml.listeners[name=redis].listen", None),
        # A new environment is not an address change.
        (
            "ConfigMap/ambassador-config.data.ambassador.toml.listeners[name=redis]"
            ".environments.staging",
            None,
        ),
        ("ConfigMap/ambassador-config.data.ambassador.toml.drain_timeout", None),
        ("Deployment/app.spec.template.spec.initContainers[name=adapter].image", None),
        ("Deployment/app.spec.template.spec.containers[name=app].args[1]", None),
        (
            "Deployment/app.spec.template.spec.initContainers[name=watcher].env[name=X].value",
            None,
        ),
        ("Deployment/app.metadata.labels.team", None),
        ("ConfigMap/env-switch.data.other", None),
        ("ConfigMap/app-config.data.app.toml.server.listen", None),
        ("Service/app", None),
    ],
)
def test_classify(path: str, expected: str | None) -> None:
    assert classify(path) == expected


def _objs(env: str, replicas: int, image: str, endpoint: str) -> list[dict[str, Any]]:
    toml = '[[listeners]]\nname = "pg"\nlisten = "127.0.0.1:5432"\n'
    toml += f'[listeners.environments]\ndev = ["{endpoint}"]\n'
    return [
        {"kind": "ConfigMap", "metadata": {"name": "env-switch"}, "data": {"environment": env}},
        {
            "kind": "ConfigMap",
            "metadata": {"name": f"ambassador-config-{'a' * 5}{len(endpoint):05d}"},
            "data": {"ambassador.toml": toml},
        },
        {
            "kind": "Deployment",
            "metadata": {"name": "app"},
            "spec": {
                "replicas": replicas,
                "template": {
                    "spec": {
                        "containers": [{"name": "app", "image": image}],
                        "volumes": [
                            {
                                "name": "cfg",
                                "configMap": {
                                    "name": f"ambassador-config-{'a' * 5}{len(endpoint):05d}"
                                },
                            }
                        ],
                    }
                },
            },
        },
    ]


def test_overlay_differences_allows_only_the_listed_kinds() -> None:
    base = _objs("dev", 1, "app:1", "db:5432")
    overlay = _objs("prod", 3, "app:1", "db-primary.prod:5432")
    allowed, forbidden = overlay_differences(base, overlay)
    assert forbidden == []
    assert set(allowed) == {"the environment switch", "replicas", "backend addresses"}
    # The hash-suffixed name and the reference to it are normalised away together.
    assert "ConfigMap/ambassador-config" in normalise(overlay)


def test_overlay_differences_catches_a_changed_image() -> None:
    allowed, forbidden = overlay_differences(
        _objs("dev", 1, "app:1", "db:5432"), _objs("dev", 1, "app:2", "db:5432")
    )
    assert allowed == {}
    assert forbidden == ["Deployment/app.spec.template.spec.containers[name=app].image"]
