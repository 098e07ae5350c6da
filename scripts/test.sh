#!/usr/bin/env bash
# Installs what the tests need into .venv and runs ruff and the whole test
# suite. Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements-test.txt
ruff check .
python -m pytest -n "${PYTEST_WORKERS:-2}" --durations=15 "$@"
