#!/usr/bin/env bash
# A PostgreSQL for the tests and benchmarks that need one (multi-coordinator registry, the PostgreSQL variants
# of the registry tests): the server on 127.0.0.1:${EDGEFLEET_PG_PORT:-5432} with trust authentication for the
# user postgres and a database named test, which is what they connect to. Safe to run again.
#
# - A server already answering on that port is used as it is (the database test is created when missing).
# - Otherwise a cluster of our own is made and started: initdb from the installed PostgreSQL (Debian's
#   postgresql package, /usr/lib/postgresql/N/bin; scripts/setup.sh installs it with apt-get when missing) in
#   ${EDGEFLEET_PG_DIR:-${TMPDIR:-/tmp}/edgefleet-pg-PORT}, listening on 127.0.0.1 only, its socket in that
#   directory. PostgreSQL refuses to run as root, so as root the cluster belongs to the postgres user (the
#   Debian package creates it; created here as a system user when missing); otherwise to the current user.
# - Stop it with: pg_ctl -D "$EDGEFLEET_PG_DIR/data" stop (as that user).
set -euo pipefail
PORT="${EDGEFLEET_PG_PORT:-5432}"
DIR="${EDGEFLEET_PG_DIR:-${TMPDIR:-/tmp}/edgefleet-pg-$PORT}"

pg_bin() {  # the newest installed PostgreSQL's bin directory (or the one holding initdb on PATH)
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  return 1
}

answers() { # something speaks PostgreSQL on the port
  if command -v pg_isready >/dev/null 2>&1; then pg_isready -q -h 127.0.0.1 -p "$PORT"; return; fi
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

ensure_test_db() {
  local psql="${1:-psql}"
  if ! "$psql" -h 127.0.0.1 -p "$PORT" -U postgres -d test -Atqc 'select 1' >/dev/null 2>&1; then
    "$psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null
  fi
  echo "==> PostgreSQL on 127.0.0.1:$PORT, database test (user postgres)"
}

BIN="$(pg_bin || true)"
PSQL="psql"; command -v psql >/dev/null 2>&1 || PSQL="${BIN:+$BIN/}psql"
if answers; then
  ensure_test_db "$PSQL"
  exit 0
fi
if [ -z "$BIN" ]; then
  echo "PostgreSQL is not installed (no initdb): run scripts/setup.sh, or apt-get install postgresql" >&2
  exit 1
fi

as_owner=()
OWNER="$(id -un)"
if [ "$(id -u)" -eq 0 ]; then
  OWNER=postgres
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" --shell /usr/sbin/nologin postgres
  if command -v runuser >/dev/null 2>&1; then as_owner=(runuser -u postgres --); else as_owner=(su postgres -s /bin/sh -c); fi
fi
run() {
  if [ ${#as_owner[@]} -eq 0 ]; then "$@"
  elif [ "${as_owner[0]}" = runuser ]; then "${as_owner[@]}" "$@"
  else "${as_owner[@]}" "$(printf '%q ' "$@")"
  fi
}

mkdir -p "$DIR"
chown "$OWNER" "$DIR" 2>/dev/null || true
chmod 700 "$DIR"
if [ ! -s "$DIR/data/PG_VERSION" ]; then
  echo "==> initdb $DIR/data (owner $OWNER)"
  run "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
fi
echo "==> starting PostgreSQL on 127.0.0.1:$PORT ($DIR/data, log $DIR/postgres.log)"
run "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
  -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DIR -c max_connections=200" start >/dev/null \
  || { tail -n 20 "$DIR/postgres.log" >&2; exit 1; }
ensure_test_db "$BIN/psql"
