"""``python -m ambassador.serve``: the entry of the lean process and of worker processes.

``ambassador run`` execs ``python -OO -P -m sidecar_common.leanstart ambassador.serve
--run FD`` (see :func:`ambassador.workers.exec_run`; ``leanstart`` defers OpenSSL,
then runs this module as ``-m`` would), and the supervisor of ``--workers N``
starts its workers the same way with ``--worker``. The entry is a module
of its own so that :mod:`ambassador.workers` is imported once, under its own
name: run as ``-m ambassador.workers`` it would be ``__main__``, and unpickling
its ``RunSpec`` would import it a second time (twice the code in memory, and
two ``RunSpec`` classes that ``isinstance`` tells apart).
"""

from __future__ import annotations

from ambassador.workers import main

if __name__ == "__main__":
    main()
