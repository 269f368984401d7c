#!/usr/bin/env bash
# Quickstart: set everything up on a fresh machine (scripts/setup.sh: .venv with every extra, and the
# system packages it names, via apt-get when they are missing), then run the end-to-end job:
# `edgefleet demo` trains and compiles a model, rolls it out in stages to simulated devices over a
# real Mosquitto, detects drift, retrains it with Flower on the devices' own data and rolls out the
# improved version.
#   bash scripts/quickstart.sh [WORKDIR] [DEMO OPTIONS]
# Everything is kept in WORKDIR (default quickstart-work: summary.json, logs/, bundles/, devices/); a first
# argument that starts with '-' is already a demo option. The other arguments go to `edgefleet demo`
# (e.g. --devices 5). EDGEFLEET_SKIP_SETUP=1 skips scripts/setup.sh (already set up).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${EDGEFLEET_SKIP_SETUP:-}" ] || bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export PATH="$PWD/.venv/bin:$PATH"   # flower-superlink / flower-supernode / flwr live here
W="quickstart-work"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  W="$1"
  shift
fi
if [ -e "$W" ] && [ -n "$(ls -A "$W" 2>/dev/null)" ]; then
  echo "==> keeping the previous run as $W.previous"   # the demo wants a new or empty directory
  rm -rf "$W.previous" && mv "$W" "$W.previous"
fi
exec edgefleet demo --workdir "$W" --keep "$@"
