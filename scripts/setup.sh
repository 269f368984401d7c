#!/usr/bin/env bash
# Set up everything edgefleet needs on a fresh machine: a virtualenv in .venv with
# all extras, and Mosquitto (apt-get) when it is missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${EDGEFLEET_VENV:-.venv}"

# system packages: the MQTT broker, nginx (bundles over HTTP in tests), Chromium + its driver (dashboard tests)
need=()
{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || need+=(mosquitto mosquitto-clients)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# `python3 -m venv` needs ensurepip, which Debian and Ubuntu ship apart, in python3-venv
[ -x "$VENV/bin/python" ] || "$PYTHON" -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]} (apt-get)"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]} and apt-get is not available: install them by hand" >&2
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
