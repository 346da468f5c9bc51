# syntax=docker/dockerfile:1.7
# The adapter sidecar image. Build from the repository root (the context is the project):
#   docker build -f images/adapter.Dockerfile -t sidecars-adapter:0.1.0 .
# Expected size: about 185 MB uncompressed, about 62 MB compressed (see images/README.md).
# The three sidecar images differ only in their ENTRYPOINT and labels: each installs the
# same toolkit wheel, so a node that pulls one shares every layer but the last with the others.

# --- builder: the project's wheel and the wheels of its dependencies ----------------------
FROM python:3.11.14-slim-bookworm AS builder
WORKDIR /src
# A C compiler for setup.py's build of the ambassador's hot modules, mypyc and C (here only: the
# final stage gets the compiled wheel). Any bookworm gcc builds the same extension.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY sidecar_common/ sidecar_common/
COPY ambassador/ ambassador/
COPY adapter/ adapter/
COPY watcher/ watcher/
# Every runtime dependency ships manylinux wheels for CPython 3.11; pip builds only our
# wheel, with the compiled modules (SIDECARS_COMPILE=1: a failed compile fails the build).
RUN SIDECARS_COMPILE=1 python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# --- final: the slim base plus the installed wheels, nothing else -------------------------
FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sidecars-adapter" \
      org.opencontainers.image.description="Adapter sidecar: normalises and enriches an app's logs into one JSON schema" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
# No .pyc writes at run time (the root filesystem is read-only in the pod; pip compiles
# the bytecode at install time instead) and no buffering of our JSON log lines.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The serving process runs with -OO (sidecar_common.leanexec: no docstrings in memory), which
# reads *.opt-2.pyc: sidecar_common.precompile writes them for the toolkit and for what its
# modules import (the standard library's included), so a start does not compile from source.
# The wheels come in through a bind mount from the builder, so they never land in a layer;
# --no-index: nothing is fetched here. Then the installers go: setuptools, wheel and pip are
# not needed to run and are attack surface. One RUN, so no layer keeps a cache or a wheel.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sidecars-*.whl \
    && env -u PYTHONDONTWRITEBYTECODE python -OO -m sidecar_common.precompile \
    && python -m pip uninstall --yes setuptools wheel pip \
    && groupadd --system --gid 10001 sidecar \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecar
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# Exec form and the console script itself: the sidecar is PID 1 and receives SIGTERM directly.
ENTRYPOINT ["adapter"]
CMD ["--help"]
