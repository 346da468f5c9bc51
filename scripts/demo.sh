#!/usr/bin/env bash
# The Quickstart demo (README command one): set up .venv with the project (scripts/setup.sh,
# without the test extra), then run an app and its ambassador, adapter and watcher on loopback,
# explaining each step (demo/run.py). Extra arguments go to the demo (e.g. --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m demo "$@"
