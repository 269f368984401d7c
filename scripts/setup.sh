#!/usr/bin/env bash
# Set up everything edgefleet needs on a fresh machine: a virtualenv in .venv with
# all extras, and Mosquitto (apt-get) when it is missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${EDGEFLEET_VENV:-.venv}"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "==> installing mosquitto (MQTT broker)"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  else
    echo "mosquitto is missing and apt-get is not available: install mosquitto by hand" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.edgefleet-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "==> installing edgefleet[all] into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[all]"
  touch "$stamp"
fi
echo "==> ready: $VENV/bin/edgefleet $("$VENV/bin/edgefleet" --version)"
