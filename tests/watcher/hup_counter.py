"""A stand-in app for the tests: counts the SIGHUPs it receives.

Usage: hup_counter.py COUNT_FILE PID_FILE. Writes its pid to PID_FILE once its
handler is installed, and the number of SIGHUPs so far to COUNT_FILE after
each one (atomically, by rename). Exits on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time

count = 0


def write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def on_hup(signum: int, frame: object) -> None:
    global count
    count += 1
    write(sys.argv[1], str(count))


def main() -> None:
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    write(sys.argv[1], "0")
    write(sys.argv[2], str(os.getpid()))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
