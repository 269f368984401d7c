#!/usr/bin/env bash
# The whole test suite: sets up (scripts/setup.sh), lints (ruff, then mypy with the
# project's [tool.mypy] config), then runs pytest with the given arguments
# (`bash scripts/test.sh --co -q`, `bash scripts/test.sh tests/sdk -x`). A lint
# failure fails the script before any test runs; the linters report on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 TF_CPP_MIN_LOG_LEVEL=3
echo "==> ruff check" >&2
.venv/bin/ruff check --quiet . >&2
echo "==> mypy" >&2
.venv/bin/mypy >&2  # the files and settings of [tool.mypy] in pyproject.toml (--strict's flags for sdk/ and cloud_sync/wire/)
exec .venv/bin/python -m pytest -q "$@"
