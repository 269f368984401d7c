#!/usr/bin/env bash
# The whole test suite: sets up (scripts/setup.sh) then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest -q "$@"
