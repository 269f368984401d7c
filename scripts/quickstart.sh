#!/usr/bin/env bash
# Quickstart: set everything up on a fresh machine (.venv with every extra, Mosquitto via
# apt-get when missing), then run the end-to-end job: `edgefleet demo` trains and compiles a
# model, rolls it out in stages to simulated devices over a real Mosquitto, detects drift,
# retrains it with Flower on the devices' own data and rolls out the improved version.
# Everything is kept in ${1:-quickstart-work} (summary.json, logs/, bundles/, devices/).
# Extra arguments go to `edgefleet demo` (e.g. --devices 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export PATH="$PWD/.venv/bin:$PATH"   # flower-superlink / flower-supernode / flwr live here
W="${1:-quickstart-work}"
shift || true
if [ -e "$W" ] && [ -n "$(ls -A "$W" 2>/dev/null)" ]; then
  echo "==> keeping the previous run as $W.previous"   # the demo wants a new or empty directory
  rm -rf "$W.previous" && mv "$W" "$W.previous"
fi
exec edgefleet demo --workdir "$W" --keep "$@"
