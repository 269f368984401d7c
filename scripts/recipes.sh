#!/usr/bin/env bash
# Runs the README's "Your own model" recipes exactly as written there: the ```bash blocks
# between <!-- recipes:start --> and <!-- recipes:end -->, in order, in one shell (sets
# everything up first). With EDGEFLEET_RECIPES_ROOT=DIR they run in a copy of the layout
# they expect (DIR/scripts -> this repo's scripts, DIR/.venv -> its venv) instead of here.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
[ -n "${EDGEFLEET_SKIP_SETUP:-}" ] || bash scripts/setup.sh >/dev/null
root="${EDGEFLEET_RECIPES_ROOT:-$repo}"
if [ "$root" != "$repo" ]; then
  mkdir -p "$root"
  ln -sfn "$repo/scripts" "$root/scripts"
  ln -sfn "$repo/.venv" "$root/.venv"
fi
script="$(mktemp)"
trap 'rm -f "$script"' EXIT
"$repo/.venv/bin/python" - "$repo/README.md" > "$script" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("<!-- recipes:start -->", 1)[1].split("<!-- recipes:end -->", 1)[0]
blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
print("set -euo pipefail")
print("\n".join(blocks))
PY
cd "$root"
bash "$script"
