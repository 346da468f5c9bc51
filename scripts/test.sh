#!/usr/bin/env bash
# The test command: sets up what the tests need (scripts/setup.sh --test), then runs the
# static checks (ruff, mypy --strict) and the whole test suite; without arguments, the
# ambassador's tests once more against its mypyc-compiled build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
packages=(sidecar_common ambassador adapter watcher demo)
echo "[test] ruff" >&2
.venv/bin/ruff check "${packages[@]}" tests bench
echo "[test] mypy --strict" >&2
.venv/bin/mypy "${packages[@]}"
echo "[test] pytest" >&2
.venv/bin/pytest -q "$@"
if [ "$#" -eq 0 ]; then
  # The ambassador as it ships: its hot modules compiled with mypyc (setup.py), the same
  # tests against that build (scripts/compiled.py builds it beside a copy of the sources).
  echo "[test] mypyc build" >&2
  overlay=$(.venv/bin/python scripts/compiled.py)
  echo "[test] pytest tests/ambassador against the compiled build" >&2
  SIDECARS_COMPILED_OVERLAY="$overlay" .venv/bin/pytest -q -p no:cacheprovider tests/ambassador
fi
