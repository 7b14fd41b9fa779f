#!/usr/bin/env bash
# Run the whole test suite: lint, then pytest in the platform environment (Python 3.11) and
# in the TFX environment (Python 3.10, files marked tfx_env). Extra arguments go to both pytests.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
echo "== lint (ruff) and types (mypy)"
.venvs/platform/bin/ruff check . || status=1
.venvs/platform/bin/ruff format --check . || status=1
.venvs/platform/bin/mypy clinflow pipelines components serving || status=1
echo "== tests: platform environment (Python 3.11)"
.venvs/platform/bin/python -m pytest "$@" || status=1
echo "== tests: tfx environment (Python 3.10)"
.venvs/tfx/bin/python -m pytest "$@" || status=1
exit "$status"
