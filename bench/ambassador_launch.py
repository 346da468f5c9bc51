"""Start ``ambassador`` with the fast relay swapped in (until the listener imports it itself).

The benchmark runs the ambassador through this launcher so the relay under test
is chosen by ``AMBASSADOR_RELAY`` (``splice`` = ambassador.fastrelay, ``stream``
= the plain trio relay) whatever the listener currently imports. Once the
listener calls ``fastrelay.relay`` the patch is a no-op.
"""

from __future__ import annotations

import sys


def main() -> None:
    import ambassador.listener as listener
    from ambassador import fastrelay

    listener.relay = fastrelay.relay  # type: ignore[attr-defined]
    argv = sys.argv[1:]
    if argv[:1] == ["--workers"]:
        from ambassador.workers import main as workers_main

        workers_main(argv)
        return
    from ambassador.cli import main as cli_main

    sys.argv = ["ambassador", *argv]
    cli_main()


if __name__ == "__main__":
    main()
