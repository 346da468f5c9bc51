#!/usr/bin/env bash
# Sets up everything this project needs on a Debian/Ubuntu machine with python3 >= 3.11:
# a virtualenv in .venv with the project installed (editable), and, with --test, the test
# extra plus the real servers and clients the tests start (PostgreSQL, Redis, etcd, nginx...),
# installed through apt-get when missing and running as root.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '[setup] %s\n' "$*" >&2; }

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "python3 >= 3.11 is required (found: $("$python" --version 2>&1))"; exit 1
fi

apt_packages=()
need() {  # need BINARY PACKAGE: queue PACKAGE when BINARY is missing
  if ! command -v "$1" >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/"$1" >/dev/null 2>&1; then
    apt_packages+=("$2")
  fi
}

need_file() {  # need_file PATH PACKAGE: queue PACKAGE when PATH is missing
  [ -e "$1" ] || apt_packages+=("$2")
}

if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_packages+=("python3-venv")
fi
if [ "$want_test" = 1 ]; then
  need postgres postgresql
  need psql postgresql-client
  need pgbench postgresql-contrib
  need redis-server redis-server
  need redis-cli redis-tools
  need etcd etcd-server
  need etcdctl etcd-client
  need nginx nginx-light
  need curl curl
  need ip iproute2
  need javac default-jdk-headless
  need npm npm
  # bench/ (its smoke mode runs in the tests): the peers and the load generators
  need haproxy haproxy
  need iperf3 iperf3
  need wrk wrk
  # bench/adapter.py (its smoke mode runs in the tests): GNU time for peak RSS, syslog-ng as the C peer
  need_file /usr/bin/time time
  need syslog-ng syslog-ng-core
  need_file /usr/share/syslog-ng/include/scl/apache/apache.conf syslog-ng-scl
  need unzip unzip
  # scripts/compiled.py: the ambassador's mypyc build (a C compiler and Python's headers)
  need gcc gcc
  need_file "$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" python3-dev
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${apt_packages[*]}; install them with: sudo apt-get install -y ${apt_packages[*]}"
    exit 1
  fi
  say "installing Debian packages: ${apt_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  # Debian starts packaged services on install; the tests start their own on free ports.
  for svc in postgresql redis-server etcd nginx haproxy syslog-ng; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
  done
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
extra=""
[ "$want_test" = 1 ] && extra="[test]"
stamp=".venv/.installed"; [ "$want_test" = 1 ] && stamp=".venv/.installed-test"
digest=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  say "installing the project into .venv ${extra}"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # Pure Python here (SIDECARS_COMPILE=0, see setup.py): a compiled module would shadow
  # its edited source. The tests and bench/ build the compiled one aside (scripts/compiled.py).
  SIDECARS_COMPILE=0 .venv/bin/python -m pip install -q -e ".${extra}"
  echo "$digest" > "$stamp"
fi
if [ "$want_test" = 1 ] && [ -f scripts/install-deploy-tools.sh ]; then
  bash scripts/install-deploy-tools.sh
fi
say "ready"
