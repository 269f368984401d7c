#!/usr/bin/env bash
# A tour of the SDK and compiler CLIs on one model (sets everything up first):
# example data -> trained digits CNN -> compiled, signed int8 bundle (with its report)
# -> verify -> inspect -> predict -> benchmark. Everything lands in ${1:-compiler-tour}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
EF=".venv/bin/edgefleet"
W="${1:-compiler-tour}"
mkdir -p "$W"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "signing keys";              [ -f "$W/keys/edgefleet.key" ] || $EF keys generate --out "$W/keys"
step "example data (digits)";     $EF datasets digits -o "$W/data"
step "train the example model";   $EF examples train-digits -o "$W/digits.keras" --force
step "compile: int8 TFLite within 1 point of the float model"
$EF compile "$W/digits.keras" -o "$W/digits-bundle" --quantize int8 --format tflite \
    --calibration "$W/data/train.npz" --eval "$W/data/test.npz" --max-accuracy-drop 1.0 \
    --name digits --version 1.0.0 --key "$W/keys/edgefleet.key" --archive --force --quiet
step "verify the signature and hashes"; $EF verify "$W/digits-bundle.efb" --pub "$W/keys/edgefleet.pub"
step "inspect";                    $EF inspect "$W/digits-bundle"
step "predict on the test set (first 10 labels)"
$EF predict "$W/digits-bundle" --input "$W/data/test.npz" --output "$W/predictions.npy" --pub "$W/keys/edgefleet.pub"
.venv/bin/python - "$W" <<'PY'
import sys, numpy as np
w = sys.argv[1]
y = np.load(f"{w}/data/test.npz")["y"]
p = np.load(f"{w}/predictions.npy").argmax(1)
print("first 10 predicted:", p[:10].tolist())
print("first 10 true:     ", y[:10].tolist())
print(f"accuracy on {len(y)} held-out digits: {(p == y).mean():.4f}")
PY
step "benchmark on this machine"; $EF bench "$W/digits-bundle" --runs 1000 --compare-raw --json-out "$W/bench.json"
step "done: bundle in $W/digits-bundle, its report in $W/digits-bundle.report/ (report.md, PNG), all results in $W/"
