#!/usr/bin/env bash
# Makes .venv with microte and its pinned packages, once; later runs only check it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.installed
if [[ -f $stamp && $stamp -nt pyproject.toml && $stamp -nt constraints.txt ]]; then
  exit 0
fi
if ! command -v "$PY" >/dev/null; then
  echo "microte needs Python 3.11 or newer ($PY not found); set PYTHON=/path/to/python3" >&2; exit 1
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "microte needs Python 3.11 or newer; $PY is $("$PY" --version)" >&2; exit 1; }
echo "==> creating .venv and installing microte (first run only)"
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
touch "$stamp"
