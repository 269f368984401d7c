#!/usr/bin/env bash
# Set up everything edgefleet needs on a fresh machine: a virtualenv in .venv with
# all extras, Mosquitto, nginx, Chromium and PostgreSQL (apt-get) when they are missing, and a running
# PostgreSQL for the tests (scripts/postgres.sh). Safe to run again.
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
# PostgreSQL (the multi-coordinator registry tests): installed unless a server answers already; scripts/postgres.sh
# below starts a cluster of its own when none runs
{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
  || (exec 3<>"/dev/tcp/127.0.0.1/${EDGEFLEET_PG_PORT:-5432}") 2>/dev/null; } || need+=(postgresql)
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
# a PostgreSQL on 127.0.0.1:${EDGEFLEET_PG_PORT:-5432} with the database test (in CI a failure fails the setup;
# elsewhere the PostgreSQL tests skip, naming the reason)
if ! bash scripts/postgres.sh; then
  [ -n "${CI:-}" ] && { echo "PostgreSQL could not be started (scripts/postgres.sh)" >&2; exit 1; }
  echo "warning: no PostgreSQL (scripts/postgres.sh failed): its tests will skip" >&2
fi
echo "==> ready: $VENV/bin/edgefleet $("$VENV/bin/edgefleet" --version)"
