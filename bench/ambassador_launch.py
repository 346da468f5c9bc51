"""Start the ambassador with the fast relay swapped in (until the listener imports it itself).

The benchmark runs the ambassador through this launcher so that the relay under
test is chosen by ``AMBASSADOR_RELAY`` (``splice``: ambassador.fastrelay with its
hub thread; ``splice-loop``: the hub as a trio task; ``stream``: the plain trio
relay) whatever the listener imports today. ``--lean`` runs as ``ambassador run``
will once the CLI calls ``workers.exec_run`` (it execs a process without typer);
``--workers N`` is the stand-alone entry of ambassador.workers (also exec'd);
``--run FD`` and ``--worker`` are the exec'd process and a worker process, so
they get the same relay. Once the listener calls ``fastrelay.relay`` and
``ambassador run`` has ``--workers`` and execs, this is a thin alias.
"""

from __future__ import annotations

import json
import sys


def _patch_relay() -> None:
    import ambassador.listener as listener
    from ambassador import fastrelay

    listener.relay = fastrelay.relay  # type: ignore[attr-defined]


def main() -> None:
    _patch_relay()
    argv = sys.argv[1:]
    if argv == ["--worker"]:
        from ambassador.workers import worker_main

        worker_main()
        return
    if argv[:1] == ["--run"]:
        from ambassador.workers import run_main

        run_main(int(argv[1]))
        return
    if argv[:1] == ["--lean"]:
        # ``ambassador run`` as it would be with exec_run wired in the CLI.
        argv = ["--workers", "1", "--exec", *argv[1:]]
    if argv[:1] == ["--workers"]:
        from ambassador.workers import main as workers_main

        command = [sys.executable, __file__, "--worker"]
        extra = [] if "--exec" in argv else ["--exec"]
        workers_main([*argv, *extra, "--worker-command", json.dumps(command)])
        return
    from ambassador.cli import main as cli_main

    sys.argv = ["ambassador", *argv]
    cli_main()


if __name__ == "__main__":
    main()
