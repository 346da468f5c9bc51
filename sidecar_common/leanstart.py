"""``python -m sidecar_common.leanstart MODULE ARGS...``: serve with OpenSSL deferred.

Why: trio imports :mod:`ssl` (for ``trio.SSLStream``) and :mod:`hmac` (for
DTLS cookies) when it is imported, and both load OpenSSL's libcrypto: about
5 MiB of resident memory in every sidecar, while a sidecar without TLS never
calls either. A sidecar's idle RSS is what the pod's memory request is sized
from, so it is paid on every pod. Python cannot unload a module, so the serving
process (see :mod:`sidecar_common.leanexec`, which execs this module) puts a
:class:`DeferredModule` in ``sys.modules`` for each of :data:`DEFERRED` before
anything else is imported, then runs ``MODULE`` as ``__main__`` exactly as
``python -m MODULE ARGS...`` would.

A deferred module behaves as the real one: ``import ssl`` and ``from ssl
import X`` work, and the first attribute anyone reads (at import time or when
the ambassador builds its first TLS context) imports the real module and copies
its namespace into the placeholder, so references taken earlier see everything.
Nothing changes but when OpenSSL is loaded. If a future trio reads an attribute
at import time, the module is simply loaded then: slower to start, never wrong.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import runpy
import sys
import threading
import types
from collections.abc import Iterable, Sequence
from typing import Any, Final

__all__ = ["DEFERRED", "DeferredModule", "defer", "main"]

#: What trio imports at start-up for TLS, DTLS cookies and IDNA host names only:
#: ``ssl`` and ``hmac`` load OpenSSL (~5 MiB resident), ``idna`` its tables (~0.2 MiB).
DEFERRED: Final = ("ssl", "hmac", "idna")

_lock = threading.RLock()


class DeferredModule(types.ModuleType):
    """Stands for a module in ``sys.modules`` until one of its attributes is read.

    ``__spec__`` is the real module's spec, set in the namespace, so the import
    system sees a finished module (it reads ``__spec__._initializing``, which
    is why :class:`importlib.util.LazyLoader` loads on the first ``import``).
    Every other name is missing until the first read, which goes through
    ``__getattr__``, imports the real module and copies its namespace here.
    """

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec

    def __getattr__(self, attr: str) -> Any:
        return getattr(load(self), attr)


def load(module: types.ModuleType) -> types.ModuleType:
    """The real module behind ``module`` (itself when it is not deferred), imported once."""
    if not isinstance(module, DeferredModule):
        return module
    with _lock:
        real: types.ModuleType | None = vars(module).get("_deferred_real")
        if real is None:
            name = module.__name__
            if sys.modules.get(name) is module:
                del sys.modules[name]
            real = importlib.import_module(name)
            vars(module).update(vars(real))
            vars(module)["_deferred_real"] = real
        return real


def defer(names: Iterable[str]) -> list[str]:
    """Put a :class:`DeferredModule` in ``sys.modules`` for each name not imported yet.

    Returns the names deferred. A name Python cannot find is left alone: its
    ``import`` fails later exactly as it would have.
    """
    deferred = []
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        sys.modules[name] = DeferredModule(spec)
        deferred.append(name)
    return deferred


def main(argv: Sequence[str] | None = None) -> None:
    """Defer :data:`DEFERRED`, then run ``argv[0]`` as ``__main__`` with the rest as its argv."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        sys.stderr.write("leanstart: error: usage: python -m sidecar_common.leanstart MODULE ...\n")
        raise SystemExit(2)
    defer(DEFERRED)
    module, rest = args[0], args[1:]
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
