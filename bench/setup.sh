#!/usr/bin/env bash
# What the benchmark needs beyond the test setup: the peers (HAProxy, Envoy) and the load tools.
# scripts/setup.sh --test installs all of it already; this is for running bench/ alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
