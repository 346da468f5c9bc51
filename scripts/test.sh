#!/usr/bin/env bash
# The test command: sets up what the tests need (scripts/setup.sh --test), then runs the
# static checks (ruff, mypy --strict) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
packages=(sidecar_common ambassador adapter watcher demo)
echo "[test] ruff" >&2
.venv/bin/ruff check "${packages[@]}" tests bench
echo "[test] mypy --strict" >&2
.venv/bin/mypy "${packages[@]}"
echo "[test] pytest" >&2
exec .venv/bin/pytest -q "$@"
