"""The Kubernetes manifests (k8s-manifests/), rendered and checked offline.

Each of base and the dev, test and prod overlays is rendered with the real kubectl 1.35
(``kubectl kustomize``) and validated by kubernetes-validate against the schemas of
Kubernetes 1.35.0 in strict mode (unknown fields rejected). Then the pod is checked for
what the sidecars need: native sidecars, the environment switch wired to the ambassador
(and accepted by the real ``ambassador check``), Downward API variables, probes on the
admin ports, resources, the restricted security context, and the log fifo between the
app and the adapter, whose shell plumbing is run for real. Last, the overlays are diffed
object by object: they may differ only in the environment switch, the backend addresses,
the replica count and the resources.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.k8s import (
    KUBERNETES_VERSION,
    OVERLAYS,
    SIDECARS,
    VENV_BIN,
    container,
    find,
    flag_value,
    objects,
    overlay_differences,
    pod_spec,
    quantity,
    render,
    tools,
)

TARGETS = ("base", *OVERLAYS)
DOWNWARD_API = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "NODE_NAME": "spec.nodeName",
    "POD_IP": "status.podIP",
}
ADMIN_PORTS = {"ambassador": 9101, "adapter": 9102, "watcher": 9103}


def _env(c: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in c.get("env", [])}


def _mount_for(spec: Mapping[str, Any], c: Mapping[str, Any], path: str) -> tuple[Any, Any]:
    """The volume mount of container ``c`` that holds ``path``, and its volume."""
    hits = [
        m
        for m in c.get("volumeMounts", [])
        if PurePosixPath(path).is_relative_to(PurePosixPath(m["mountPath"]))
    ]
    assert hits, f"{path} is on no volume of {c['name']}"
    mount = max(hits, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return mount, volume


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_kubernetes_1_35(target: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{target}.yaml"
    rendered.write_text(render(target), encoding="utf-8")
    proc = subprocess.run(
        [
            str(tools().kubernetes_validate),
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "--strict",
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = [line for line in out.splitlines() if "passed" in line]
    assert len(passed) == len(objects(target)) == 5, out
    assert all(f"against version {KUBERNETES_VERSION.rsplit('.', 1)[0]}" in p for p in passed)


@pytest.mark.parametrize("target", TARGETS)
def test_sidecars_are_native_sidecars_before_the_app(target: str) -> None:
    spec = pod_spec(objects(target))
    init = spec["initContainers"]
    assert [c["name"] for c in init] == ["adapter", "ambassador", "watcher"]
    assert all(c.get("restartPolicy") == "Always" for c in init)
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert "restartPolicy" not in spec["containers"][0]
    for c in init:
        assert c["image"] == f"sidecars-{c['name']}:0.1.0"


@pytest.mark.parametrize("target", TARGETS)
def test_security_context_is_restricted(target: str) -> None:
    spec = pod_spec(objects(target))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in [*spec["initContainers"], *spec["containers"]]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert sc.get("runAsUser", pod["runAsUser"]) != 0
        assert not sc.get("privileged", False)
        # Read-only root: every sidecar gets a writable /tmp of its own, bounded.
        mount, volume = _mount_for(spec, c, "/tmp/x")
        assert mount["mountPath"] == "/tmp" and "sizeLimit" in volume["emptyDir"], c["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_probes_on_each_sidecars_admin_port(target: str) -> None:
    spec = pod_spec(objects(target))
    for name in SIDECARS:
        c = container(spec, name)
        admin = flag_value(c["args"], "--admin")
        host, _, port = admin.rpartition(":")
        # kubelet probes the pod IP, so the admin server listens on every address.
        assert host == "0.0.0.0" and int(port) == ADMIN_PORTS[name], admin
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        expected = {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, path in expected.items():
            get = c[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            resolved = ports.get(get["port"], get["port"])
            assert resolved == int(port), f"{name} {probe} probes {resolved}, admin is {port}"


@pytest.mark.parametrize("target", TARGETS)
def test_resources_requests_and_limits(target: str) -> None:
    spec = pod_spec(objects(target))
    for c in [*spec["initContainers"], *spec["containers"]]:
        res = c["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(res["requests"][resource])
            limit = quantity(res["limits"][resource])
            assert 0 < request <= limit, (c["name"], resource, request, limit)
        # Small: a sidecar that needs more than this is a bug to look at, not to feed.
        if c["name"] in SIDECARS:
            assert quantity(res["limits"]["memory"]) <= quantity("256Mi"), c["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_downward_api_variables_on_each_sidecar(target: str) -> None:
    spec = pod_spec(objects(target))
    for name in SIDECARS:
        env = _env(container(spec, name))
        for var, field in DOWNWARD_API.items():
            assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == field, (name, var)
    # The adapter names the container whose logs it enriches.
    assert _env(container(spec, "adapter"))["CONTAINER_NAME"]["value"] == "app"


@pytest.mark.parametrize("target", TARGETS)
def test_environment_switch_is_the_ambassadors_env_file_and_env_var(target: str) -> None:
    objs = objects(target)
    spec = pod_spec(objs)
    switch = find(objs, "ConfigMap", "env-switch")
    # A stable name, so `kubectl patch configmap env-switch` reaches the running pods.
    assert switch["metadata"]["name"] == "env-switch"
    expected_env = "dev" if target == "base" else target
    assert switch["data"] == {"environment": expected_env}
    amb = container(spec, "ambassador")
    ref = _env(amb)["AMBASSADOR_ENV"]["valueFrom"]["configMapKeyRef"]
    assert ref == {"name": "env-switch", "key": "environment"}
    env_file = flag_value(amb["args"], "--env-file")
    mount, volume = _mount_for(spec, amb, env_file)
    # A whole-directory mount: kubelet does not update subPath mounts, and the live
    # switch depends on the update.
    assert "subPath" not in mount and mount.get("readOnly") is True
    assert volume["configMap"]["name"] == "env-switch"
    assert PurePosixPath(env_file).name == "environment"
    assert PurePosixPath(env_file).parent == PurePosixPath(mount["mountPath"])
    # The other sidecars publish the same switch (etcd registration, log enrichment).
    for name in ("adapter", "watcher"):
        ref = _env(container(spec, name))["APP_ENV"]["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": "env-switch", "key": "environment"}


@pytest.mark.parametrize("target", TARGETS)
def test_ambassador_config_is_accepted_by_the_real_ambassador(target: str, tmp_path: Path) -> None:
    """The mounted TOML and switch file, as the container sees them, through `ambassador check`."""
    objs = objects(target)
    spec = pod_spec(objs)
    amb = container(spec, "ambassador")
    config_path = flag_value(amb["args"], "--config")
    mount, volume = _mount_for(spec, amb, config_path)
    assert "subPath" not in mount
    cm = find(objs, "ConfigMap", "ambassador-config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    text = cm["data"][PurePosixPath(config_path).name]
    for listener in tomllib.loads(text)["listeners"]:
        assert listener["listen"].startswith("127.0.0.1:"), "listeners on localhost"
        assert not listener.get("bind_public", False)
    config = tmp_path / "ambassador.toml"
    config.write_text(text, encoding="utf-8")
    switch = find(objs, "ConfigMap", "env-switch")["data"]["environment"]
    env_file = tmp_path / "environment"
    env_file.write_text(switch, encoding="utf-8")
    proc = subprocess.run(
        [
            str(VENV_BIN / "ambassador"),
            "check",
            "--config",
            str(config),
            "--env-file",
            str(env_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AMBASSADOR_ENV": switch},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"current: {switch}" in proc.stdout, proc.stdout
    assert "listener postgres: 127.0.0.1:5432" in proc.stdout
    assert "listener redis: 127.0.0.1:6379" in proc.stdout


@pytest.mark.parametrize("target", TARGETS)
def test_watcher_watches_the_app_config_and_can_signal_the_app(target: str) -> None:
    objs = objects(target)
    spec = pod_spec(objs)
    watcher, app = container(spec, "watcher"), container(spec, "app")
    watched = flag_value(watcher["args"], "--watch")
    w_mount, w_volume = _mount_for(spec, watcher, watched + "/app.toml")
    a_mount, a_volume = _mount_for(spec, app, flag_value(app["args"], "--config"))
    assert w_volume == a_volume and w_volume["configMap"]["name"] == "app-config"
    assert "subPath" not in w_mount and "subPath" not in a_mount
    assert find(objs, "ConfigMap", "app-config")["metadata"]["name"] == "app-config"
    # SIGHUP by process name needs the app's process in the watcher's view.
    assert spec["shareProcessNamespace"] is True
    assert flag_value(watcher["args"], "--signal") == "HUP"
    assert flag_value(watcher["args"], "--process-name") == PurePosixPath(app["args"][0]).name
    # The probe and the registration point at the app's own port.
    app_port = next(p["containerPort"] for p in app["ports"] if p["name"] == "http")
    assert flag_value(watcher["args"], "--probe") == f"http://127.0.0.1:{app_port}/healthz"
    assert flag_value(watcher["args"], "--address") == f"$(POD_IP):{app_port}"
    assert flag_value(watcher["args"], "--instance") == "$(POD_NAME)"


FIFO_DIR = "/var/run/app-logs"


def _shell(c: Mapping[str, Any]) -> tuple[str, str]:
    """(script, $0) of a container whose command is `/bin/sh -c SCRIPT NAME`."""
    command = c["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 4, command
    return command[2], command[3]


@pytest.mark.parametrize("target", TARGETS)
def test_app_output_goes_through_a_fifo_to_the_adapter(target: str) -> None:
    spec = pod_spec(objects(target))
    adapter, app = container(spec, "adapter"), container(spec, "app")
    a_script, a_name = _shell(adapter)
    p_script, _ = _shell(app)
    fifo = f"{FIFO_DIR}/app.fifo"
    # The shell execs the adapter with the manifest's args, stdin the fifo: no shell stays.
    assert a_name == "adapter"
    assert 'exec adapter "$@" <>"$f"' in a_script and f"f={fifo};" in a_script
    assert p_script == f'exec "$@" 1<>{fifo} 2>&1'
    a_mount, a_volume = _mount_for(spec, adapter, fifo)
    p_mount, p_volume = _mount_for(spec, app, fifo)
    assert a_volume == p_volume and "emptyDir" in a_volume
    assert a_mount["mountPath"] == p_mount["mountPath"] == FIFO_DIR
    # The adapter starts first and is up (startupProbe) before the app opens the fifo.
    assert "startupProbe" in adapter


def test_fifo_plumbing_survives_restarts_of_either_side(tmp_path: Path) -> None:
    """The manifests' two shell snippets, run for real on a fifo in a temporary directory.

    `cat` stands in for the adapter as the reader (the plumbing is under test here, not the
    adapter): the reader must not end when the app exits and restarts, and a line the app
    writes while the reader is down must reach the next reader.
    """
    spec = pod_spec(objects("base"))
    a_script, a_name = _shell(container(spec, "adapter"))
    p_script, p_name = _shell(container(spec, "app"))
    a_script = a_script.replace(FIFO_DIR, str(tmp_path))
    p_script = p_script.replace(FIFO_DIR, str(tmp_path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cat = shutil.which("cat")
    assert cat is not None
    (bin_dir / "adapter").symlink_to(cat)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # The app: echoes each line of its stdin to stdout and stderr (both into the fifo), then
    # acks on a pipe the test reads: so the test knows each write returned (no SIGPIPE, no
    # block).
    app_code = (
        "import os, sys\n"
        "for line in sys.stdin:\n"
        "    print('out ' + line.strip(), flush=True)\n"
        "    print('err ' + line.strip(), file=sys.stderr, flush=True)\n"
        "    os.write(int(sys.argv[1]), b'ok\\n')\n"
    )
    procs: list[subprocess.Popen[str]] = []

    def start_reader() -> subprocess.Popen[str]:
        p = subprocess.Popen(
            ["/bin/sh", "-c", a_script, a_name],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(p)
        return p

    def start_app() -> tuple[subprocess.Popen[str], Any]:
        ack_r, ack_w = os.pipe()
        p = subprocess.Popen(
            ["/bin/sh", "-c", p_script, p_name, sys.executable, "-c", app_code, str(ack_w)],
            stdin=subprocess.PIPE,
            text=True,
            pass_fds=(ack_w,),
            env=env,
        )
        os.close(ack_w)
        procs.append(p)
        return p, os.fdopen(ack_r)

    def say(app: subprocess.Popen[str], ack: Any, word: str) -> None:
        assert app.stdin is not None
        app.stdin.write(word + "\n")
        app.stdin.flush()
        assert ack.readline() == "ok\n", f"the app's write of {word!r} did not return"

    def expect(reader: subprocess.Popen[str], *lines: str) -> None:
        assert reader.stdout is not None
        got = [reader.stdout.readline().rstrip("\n") for _ in lines]
        assert sorted(got) == sorted(lines)

    try:
        reader = start_reader()
        fifo = tmp_path / "app.fifo"
        # The adapter's startupProbe stands for this in the pod: the app starts once the
        # reader is up. Bounded wait for the reader's shell to create the fifo.
        for _ in range(500):
            if fifo.exists():
                break
            subprocess.run(["sleep", "0.01"], check=True)
        assert fifo.is_fifo()
        app, ack = start_app()
        say(app, ack, "one")
        expect(reader, "out one", "err one")
        # The adapter restarts while the app keeps running: the line waits in the pipe.
        reader.kill()
        reader.wait()
        say(app, ack, "two")
        assert app.poll() is None, "the app died writing while the reader was down"
        reader = start_reader()
        expect(reader, "out two", "err two")
        # The app exits and restarts: the reader must not see EOF and end.
        assert app.stdin is not None
        app.stdin.close()
        assert app.wait(timeout=30) == 0
        ack.close()
        app, ack = start_app()
        say(app, ack, "three")
        expect(reader, "out three", "err three")
        assert reader.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            if p.stdin:
                p.stdin.close()
            if p.stdout:
                p.stdout.close()


_KUBELET_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kubelet_expand(value: str, env: Mapping[str, str]) -> str:
    """kubelet's ``$(VAR)`` expansion of command/args: defined names replaced, ``$$`` -> ``$``."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _KUBELET_VAR.sub(sub, value)


def container_environment(
    objs: list[dict[str, Any]], c: Mapping[str, Any], pod: Mapping[str, str]
) -> dict[str, str]:
    """The variables kubelet would give container ``c``: values, ConfigMap keys, Downward API."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = kubelet_expand(e["value"], env)
        elif "configMapKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = find(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            env[e["name"]] = pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _read_json_lines(proc: subprocess.Popen[str], count: int, deadline: float) -> list[Any]:
    """``count`` JSON lines from ``proc``'s stdout, waiting at most until ``deadline``."""
    assert proc.stdout is not None
    records: list[Any] = []
    while len(records) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(records)} of {count} records came out: {records}"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            line = proc.stdout.readline()
            assert line, f"the adapter ended early (status {proc.wait()})"
            records.append(json.loads(line))
    return records


def test_real_adapter_reads_the_app_through_the_fifo_with_the_pods_environment(
    tmp_path: Path,
) -> None:
    """The adapter container of the prod overlay as kubelet would run it, on this machine.

    Its command and args as rendered (the admin address moved to 127.0.0.1 and a free port),
    its environment resolved as kubelet does it (ConfigMap keys, Downward API values made up
    here, ``$(VAR)`` expanded in args), the app's shell line around a real Python app that
    prints a JSON line and a logging warning: the records come out normalised and enriched.
    """
    objs = objects("prod")
    spec = pod_spec(objs)
    adapter, app = container(spec, "adapter"), container(spec, "app")
    pod = {
        "metadata.name": "app-7d9f-abcde",
        "metadata.namespace": "shop",
        "spec.nodeName": "node-1",
        "status.podIP": "10.1.2.3",
    }
    env = container_environment(objs, adapter, pod)
    script, name = _shell(adapter)
    script = script.replace(FIFO_DIR, str(tmp_path))
    args = [kubelet_expand(a, env) for a in adapter["args"]]
    args = ["--admin=127.0.0.1:0" if a.startswith("--admin=") else a for a in args]
    run_env = {
        **os.environ,
        **env,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    adapter_proc = subprocess.Popen(
        ["/bin/sh", "-c", script, name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=run_env,
    )
    try:
        deadline = time.monotonic() + 30
        fifo = tmp_path / "app.fifo"
        while not fifo.exists():
            assert time.monotonic() < deadline and adapter_proc.poll() is None
            time.sleep(0.01)
        app_code = (
            "import json, logging, sys\n"
            "print(json.dumps({'level': 'error', 'msg': 'payment failed', 'order': 42}))\n"
            "logging.basicConfig(format='%(levelname)s:%(name)s:%(message)s')\n"
            "logging.getLogger('shop.cart').warning('cart is slow')\n"
        )
        p_script, p_name = _shell(app)
        p_script = p_script.replace(FIFO_DIR, str(tmp_path))
        app_env = {**os.environ, **container_environment(objs, app, pod)}
        subprocess.run(
            ["/bin/sh", "-c", p_script, p_name, sys.executable, "-c", app_code],
            env=app_env,
            check=True,
            timeout=30,
        )
        records = _read_json_lines(adapter_proc, 2, deadline)
    finally:
        adapter_proc.terminate()
        status = adapter_proc.wait(timeout=30)
        assert adapter_proc.stdout is not None
        adapter_proc.stdout.close()
    by_message = {r["message"]: r for r in records}
    assert set(by_message) == {"payment failed", "cart is slow"}, records
    assert by_message["payment failed"]["log"]["level"] == "error"
    assert by_message["cart is slow"]["log"]["level"] == "warn"
    for record in records:
        assert record["kubernetes"]["pod"]["name"] == "app-7d9f-abcde"
        assert record["kubernetes"]["namespace"] == "shop"
        assert record["kubernetes"]["node"]["name"] == "node-1"
        assert record["kubernetes"]["container"]["name"] == "app"
        # --field=service.environment=$(APP_ENV), expanded from the env-switch ConfigMap.
        assert record["service"] == {"name": "app", "environment": "prod"}
    assert status == 0, "SIGTERM: the adapter drains and exits 0"


def test_overlays_differ_only_in_switch_addresses_replicas_and_resources() -> None:
    rendered = {target: objects(target) for target in TARGETS}
    seen: dict[tuple[str, str], set[str]] = {}
    for a, b in itertools.combinations(TARGETS, 2):
        allowed, forbidden = overlay_differences(rendered[a], rendered[b])
        assert not forbidden, f"{a} and {b} differ where they must not: {forbidden}"
        seen[(a, b)] = set(allowed)
    # And they do differ where they should: each overlay has its own switch, replica
    # count and backend addresses.
    for a, b in itertools.combinations(OVERLAYS, 2):
        assert {"the environment switch", "replicas", "backend addresses"} <= seen[(a, b)], (a, b)
    assert "resources" in seen[("dev", "prod")]
    replicas = {t: find(rendered[t], "Deployment", "app")["spec"]["replicas"] for t in OVERLAYS}
    assert replicas["dev"] < replicas["test"] < replicas["prod"]


def test_readme_commands_name_the_real_overlays_and_switch() -> None:
    """The README's kubectl commands name the real overlay paths and objects."""
    readme = (Path(__file__).resolve().parents[2] / "k8s-manifests" / "README.md").read_text(
        encoding="utf-8"
    )
    for overlay in OVERLAYS:
        assert f"kubectl apply -k k8s-manifests/overlays/{overlay}" in readme
    assert "kubectl patch configmap env-switch" in readme
    patch = next(
        line for line in readme.splitlines() if "kubectl patch configmap env-switch" in line
    )
    assert "environment" in shlex.split(patch.strip().strip("`"))[-1]
