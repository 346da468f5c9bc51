"""The Quickstart demo: an app and its three sidecars on loopback, told step by step.

Everything is a real process started here (the sidecars through their console
scripts, the app through the adapter's wrap mode) on free 127.0.0.1 ports, and
stopped by PID at the end. The stand-in databases are the built-in line
backends of ``demo.backend`` (threads of this process): they answer with their
own name, so every step can show which environment the app reached. Nothing
needs installing besides the project itself, and nothing leaves the machine.

The lines checked by ``tests/deploy/test_demo.py`` (keep them in step):
``the app reached: dev``, ``... test``, ``... prod``, ``the app logged: config reloaded``,
``Demo finished``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .backend import start_backend
from .configmap import write_configmap
from .procs import Proc, Procs
from .records import Record, RecordStream, backend_of, reached
from .records import field as get_field

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("dev", "test", "prod")
#: Seconds any single step may take before the demo gives up (a bound, not an expectation).
STEP_TIMEOUT = 15.0
#: Seconds a sidecar gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


class DemoError(Exception):
    """A step did not happen; the message says which, the sidecars' logs say why."""


# ---------------------------------------------------------------- printing


def say(text: str = "", indent: int = 2) -> None:
    """A paragraph for a human: wrapped, indented, flushed at once (the demo is watched live)."""
    if not text:
        print(flush=True)
        return
    pad = " " * indent
    for paragraph in text.split("\n"):
        print(
            textwrap.fill(paragraph, width=100, initial_indent=pad, subsequent_indent=pad)
            if paragraph
            else "",
            flush=True,
        )


def show_command(argv: Sequence[str], env: Sequence[str] = ()) -> None:
    print("    $ " + shlex.join([*env, *(_short(a) for a in argv)]), flush=True)


def _short(arg: str) -> str:
    """Paths under the temporary directory or the repository, shortened for reading."""
    arg = arg.replace(str(ROOT) + "/", "")
    bindir = str(Path(sys.executable).parent) + "/"
    return arg.replace(bindir, "")


def step(number: int, total: int, title: str) -> None:
    print(flush=True)
    print(f"Step {number}/{total}. {title}", flush=True)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    """The console script ``name`` of this environment (the venv the demo runs in)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DemoError(f"`{name}` is not installed here; run `bash scripts/setup.sh` first")
    return found


def check_alive(proc: Proc) -> None:
    status = proc.popen.poll()
    if status is not None:
        raise DemoError(f"{proc.name} exited with status {status} (its log is below)")


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """A request to one of our admin servers on loopback: (status, body text)."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def wait_until(what: str, check: Callable[[], bool], *, procs: Sequence[Proc] = ()) -> float:
    """Poll ``check`` until it holds; returns the seconds it took, or raises DemoError."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        for proc in procs:
            check_alive(proc)
        if time.monotonic() - start > STEP_TIMEOUT:
            raise DemoError(f"{what}: did not happen within {STEP_TIMEOUT:.0f} s")
        time.sleep(0.05)


def wait_ready(proc: Proc, admin: str) -> None:
    wait_until(
        f"{proc.name} ready", lambda: http("GET", f"http://{admin}/readyz")[0] == 200, procs=[proc]
    )


def wait_record(
    records: RecordStream, what: str, predicate: Callable[[Record], bool], since: int, proc: Proc
) -> Record:
    record = records.wait_for(predicate, timeout=STEP_TIMEOUT, since=since)
    if record is None:
        check_alive(proc)
        raise DemoError(f"{what}: no such record from the adapter within {STEP_TIMEOUT:.0f} s")
    return record


def metric_lines(text: str, names: Sequence[str]) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#") and line.split("{")[0].split(" ")[0] in names
    ]


# ---------------------------------------------------------------- the story


@contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="sidecars-demo-") as tmp:
        yield Path(tmp)


def run_story(workdir: Path, stage: Procs) -> None:
    total = 11
    py = sys.executable
    print("Sidecars Quickstart demo", flush=True)
    print("========================", flush=True)
    say(
        "An app and its three sidecars (ambassador, adapter, watcher) run on this machine's "
        "loopback, as the containers of one Kubernetes pod share localhost. The app "
        "(demo/app.py) knows nothing about sidecars: it asks 'its database' at a localhost port "
        "every 0.2 s, prints log lines in mixed formats, and re-reads its config on SIGHUP.\n"
        f"Scratch files (ConfigMap-style directories, the sidecars' own logs): {workdir}"
    )

    # 1. backends
    step(1, total, "Three stand-in databases: dev, test and prod")
    backends: dict[str, int] = {}
    for name in ENVIRONMENTS:
        _server, port = start_backend(name)
        backends[name] = port
    for name, port in backends.items():
        say(f"{name:<5} listens on 127.0.0.1:{port}", indent=4)
    say(
        "Each answers every question with its own name, so we can always see which one the "
        "app reached. In a cluster these are your real database servers, in other places."
    )

    # 2. the switch
    step(2, total, "The environment switch, a ConfigMap key mounted as a file")
    switch_dir = workdir / "env-switch"
    write_configmap(switch_dir, {"environment": "dev\n"})
    env_file = switch_dir / "environment"
    say(f"{env_file} says: dev", indent=4)
    say(
        "It is written the way kubelet updates a ConfigMap volume: a new hidden directory, then "
        "one atomic swap of the `..data` symlink."
    )

    # 3. ambassador
    step(3, total, "The ambassador: localhost port -> the current environment's database")
    listen = f"127.0.0.1:{free_port()}"
    amb_admin = f"127.0.0.1:{free_port()}"
    argv = [tool("ambassador"), "run", "--listen", listen]
    for name, port in backends.items():
        argv += ["--backend", f"{name}=127.0.0.1:{port}"]
    argv += ["--env-file", str(env_file), "--admin", amb_admin]
    show_command(argv, ["AMBASSADOR_ENV=dev"])
    ambassador = stage.start("ambassador", argv, env={"AMBASSADOR_ENV": "dev"})
    wait_ready(ambassador, amb_admin)
    say(
        f"The ambassador (pid {ambassador.pid}) accepts on {listen} and forwards each new "
        f"connection to the environment the file names. Its admin API is on {amb_admin} "
        "(/healthz, /readyz, /metrics, /env); GET /readyz answers 200: dev has a healthy backend."
    )

    # 4. the app through the adapter
    step(4, total, "The app, its output read by the adapter")
    config_dir = workdir / "app-config"
    write_configmap(config_dir, {"app.conf": 'greeting = "hello"\n'})
    app_http = f"127.0.0.1:{free_port()}"
    adapter_admin = f"127.0.0.1:{free_port()}"
    pid_file = workdir / "app.pid"
    argv = [
        tool("adapter"),
        "run",
        "--admin",
        adapter_admin,
        "--field",
        "service.name=demo-app",
        "--keep-original",
        "--",
        py,
        "demo/app.py",
    ]
    show_command(argv)
    app_env = {
        "APP_DB": listen,
        "APP_DB_KIND": "line",
        "APP_CONFIG": str(config_dir / "app.conf"),
        "APP_PID_FILE": str(pid_file),
        "APP_INTERVAL": "0.2",
        "APP_HTTP": app_http,
        "PYTHONUNBUFFERED": "1",
        # What Kubernetes' Downward API would give the containers of a pod.
        "POD_NAME": "demo-7c9f8d-x2k4q",
        "POD_NAMESPACE": "default",
        "NODE_NAME": socket.gethostname(),
        "POD_IP": "127.0.0.1",
        "CONTAINER_NAME": "app",
    }
    adapter = stage.start("adapter", argv, env=app_env, stdout_pipe=True)
    assert adapter.popen.stdout is not None
    records = RecordStream(adapter.popen.stdout)
    say(
        f"The app is told its database is at {listen} (the ambassador); that is all it knows. "
        "The adapter runs it as a child (wrap mode) and turns every line of its stdout and stderr "
        "into one normalised JSON record (ECS), enriched with the pod's metadata."
    )
    first = wait_record(records, "the app's first query", reached(ENVIRONMENTS), 0, adapter)
    say(f"-> the app reached: {backend_of(first)}")

    # 5. watcher
    step(5, total, "The watcher: reload the app on a config change, probe its health")
    watcher_admin = f"127.0.0.1:{free_port()}"
    argv = [
        tool("watcher"),
        "run",
        "--watch",
        str(config_dir),
        "--signal",
        "HUP",
        "--pid-file",
        str(pid_file),
        "--probe",
        f"http://{app_http}/healthz",
        "--probe-period",
        "1",
        "--admin",
        watcher_admin,
    ]
    show_command(argv)
    wait_until("the app's pid file", lambda: pid_file.read_text().strip() != "", procs=[adapter])
    watcher = stage.start("watcher", argv)
    wait_ready(watcher, watcher_admin)
    say(
        f"The watcher (pid {watcher.pid}) watches {config_dir.name}/ (a ConfigMap volume), "
        f"will send SIGHUP to the pid in {pid_file.name} on a change, and probes the app at "
        f"http://{app_http}/healthz: GET /readyz on its admin port answers 200, the app is "
        "healthy. "
        "(In a pod it can also register the app in etcd: --etcd, --service, --address.)"
    )

    # 6. flip the switch by file
    step(6, total, "Flip the switch to test, as `kubectl patch configmap env-switch` would")
    mark = records.mark()
    write_configmap(switch_dir, {"environment": "test\n"})
    say(f"{env_file} now says: test", indent=4)
    started = time.monotonic()
    record = wait_record(records, "a query reaching test", reached(["test"]), mark, adapter)
    took = time.monotonic() - started
    switched = ambassador.log_events("environment switched")
    if switched:
        last = switched[-1]
        say(
            f"The ambassador noticed: environment switched {last.get('previous')} -> "
            f"{last.get('env')} (source: {last.get('source')})."
        )
    say(f"-> the app reached: {backend_of(record)}  ({took:.1f} s after the file changed)")
    say(
        "The app was neither restarted nor reconfigured: only its new connections go elsewhere; "
        "connections already open keep their backend."
    )

    # 7. switch by the admin API
    step(7, total, "Switch to prod through the ambassador's admin API")
    print(f"    $ curl -X PUT --data prod http://{amb_admin}/env", flush=True)
    mark = records.mark()
    status, body = http("PUT", f"http://{amb_admin}/env", b"prod")
    say(f"<- {status} {body.strip()}", indent=4)
    if status != 200:
        raise DemoError(f"PUT /env answered {status}: {body}")
    record = wait_record(records, "a query reaching prod", reached(["prod"]), mark, adapter)
    say(f"-> the app reached: {backend_of(record)}")
    say(
        "PUT /env is accepted from loopback only. The file stays the source of truth when it "
        "changes again (in a pod, the next ConfigMap update wins)."
    )

    # 8. config reload
    step(8, total, "Change the app's config: the watcher reloads it")
    mark = records.mark()
    write_configmap(config_dir, {"app.conf": 'greeting = "bonjour"\n'})
    say(f'{config_dir.name}/app.conf now says: greeting = "bonjour"', indent=4)
    record = wait_record(
        records,
        "the app's reload",
        lambda r: str(r.get("message", "")).startswith("config reloaded"),
        mark,
        adapter,
    )
    wait_until("the watcher's audit line", lambda: bool(watcher.log_events("config change")))
    audit = watcher.log_events("config change")
    if audit:
        actions = audit[-1].get("actions") or []
        detail = "; ".join(str(a.get("detail", a)) for a in actions if isinstance(a, dict))
        say(f"The watcher saw the change ({audit[-1].get('change')}) and acted: {detail}.")
    say(f"-> the app logged: {record.get('message')}")

    # 9. normalised records
    step(9, total, "What the adapter made of the app's lines (pretty-printed; one per line really)")
    traceback_record = wait_record(
        records, "a traceback record", lambda r: get_field(r, "error.type") is not None, 0, adapter
    )
    json_record = wait_record(records, "a JSON line", reached(ENVIRONMENTS), 0, adapter)
    shown = [
        ("a JSON line from stdout: fields kept as labels", json_record),
        ("a Python logging line (the reload), level and logger parsed", record),
        ("a logging line and its traceback (5 lines), joined into ONE record", traceback_record),
    ]
    for index, (title, rec) in enumerate(shown):
        original = get_field(rec, "event.original")
        say(f"{title}:")
        if isinstance(original, str):
            say("the app printed:", indent=4)
            for line in original.splitlines():
                print("      " + line, flush=True)
        say("the adapter wrote:", indent=4)
        # event.original was shown above; the pod's metadata once is enough.
        hidden = {"event"} if index == 0 else {"event", "kubernetes", "ecs", "service"}
        pretty = {k: v for k, v in rec.items() if k not in hidden}
        for line in json.dumps(pretty, indent=2, ensure_ascii=False).splitlines():
            print("      " + line, flush=True)
        if index > 0:
            say("(kubernetes.*, service.name and ecs.version as in the first record)", indent=4)

    # 10. metrics
    step(10, total, "Metrics: each sidecar serves Prometheus text on GET /metrics")
    wanted = {
        ("ambassador", amb_admin): [
            "ambassador_current_env",
            "ambassador_env_switches_total",
            "ambassador_connections_total",
        ],
        ("adapter", adapter_admin): ["adapter_records_total", "adapter_multiline_joins_total"],
        ("watcher", watcher_admin): ["watcher_reloads_total", "watcher_app_healthy"],
    }
    for (name, admin), names in wanted.items():
        status, text = http("GET", f"http://{admin}/metrics")
        print(f"    $ curl http://{admin}/metrics   # the {name}", flush=True)
        for line in metric_lines(text, names)[:8]:
            print("      " + line, flush=True)


def stop_story(stage: Procs, *, failed: bool) -> bool:
    """Stop every process by PID; True if each exited cleanly."""
    if not stage.procs:
        return True
    if not failed:
        step(11, 11, "Stop everything: SIGTERM to each pid, as kubelet does at pod termination")
    clean = True
    for proc, status, already in stage.stop_all():
        if already:
            note = f"had already exited, with status {status}"
        elif proc.name == "adapter":
            note = "forwarded SIGTERM to the app, which stopped; exit status " + str(status)
        else:
            note = "drained and exited with status " + str(status)
        say(f"{proc.name} (pid {proc.pid}): {note}")
        clean = clean and status == 0
    return clean


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run an app and its ambassador, adapter and watcher on loopback, "
        "and explain each step.",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the scratch files and the sidecars' logs in DIR (default: a temporary "
        "directory, removed at the end)",
    )
    args = parser.parse_args(argv)
    with workspace(args.keep) as workdir:
        # Each in its own session: a Ctrl-C in the terminal reaches the demo only, which then
        # stops each process in order by PID.
        stage = Procs(workdir, STOP_TIMEOUT, cwd=ROOT, new_session=True)
        failed = True
        try:
            run_story(workdir, stage)
            failed = False
        except DemoError as exc:
            print(f"\nThe demo failed: {exc}", file=sys.stderr, flush=True)
            for proc in stage.procs:
                print(f"--- {proc.name}'s log (last lines):\n{proc.tail()}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nInterrupted; stopping everything.", file=sys.stderr, flush=True)
        finally:
            clean = stop_story(stage, failed=failed)
        if failed:
            return 1
        print(flush=True)
        if not clean:
            print("The demo ran, but a process did not exit cleanly (see above).", flush=True)
            return 1
        print("Demo finished: every process stopped by its PID, nothing left running.", flush=True)
        say(
            "Next: k8s-manifests/README.md runs the same four containers in a real pod, and "
            "tests/deploy/test_pod_netns.py plays this story with real PostgreSQL servers and etcd "
            "in network namespaces."
        )
    return 0
