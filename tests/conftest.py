"""Fixtures shared by the whole suite: real servers, each in its own plugin module."""

import os
import sys

# scripts/test.sh's second run of tests/ambassador: the mypyc build (scripts/compiled.py),
# in every process a test starts (PYTHONPATH) and in this one, where the packages are
# imported from it now: pytest puts the project root, whose sources would win, back in
# front of sys.path for each test module, but a package imported stays where it was found.
_overlay = os.environ.get("SIDECARS_COMPILED_OVERLAY")
if _overlay:
    sys.path.insert(0, _overlay)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_overlay, os.environ.get("PYTHONPATH")) if p
    )
    import ambassador
    import sidecar_common

    assert ambassador.__file__ is not None and ambassador.__file__.startswith(_overlay)
    assert sidecar_common.__file__ is not None and sidecar_common.__file__.startswith(_overlay)

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.redis",
    "tests.support.etcd",
    "tests.support.fluentd",
]
