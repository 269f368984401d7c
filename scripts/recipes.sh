#!/usr/bin/env bash
# The README's "Your own model" recipes, run exactly as written there (sets everything up first).
# Everything lands in ${1:-recipes-work}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${EDGEFLEET_SKIP_SETUP:-}" ] || bash scripts/setup.sh >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
W="${1:-recipes-work}"
mkdir -p "$W"
step() { printf '\n==> %s\n' "$*"; }
step "stand-in model files (your own .onnx/.tflite go here)"
python scripts/recipes/make_models.py "$W"
python scripts/recipes/make_samples.py "$W"

step "recipe 1: a streaming audio model with state"
# 1) pack: the state pair stateN -> state is proposed from the names; a window step cuts 512-sample frames
edgefleet pack "$W/vad.onnx" -o "$W/vad" --name vad --version 1 --force \
    --preprocess scripts/recipes/vad_preprocess.json
# 2) stream: a session carries the state, push() cuts windows from chunks of any length
python scripts/recipes/stream_vad.py "$W/vad"
# 3) time one streaming step against the bare runtime loop
edgefleet bench "$W/vad" --session --compare-raw --runs 300 | tail -2

step "recipe 2: a model with two inputs"
edgefleet pack "$W/fusion.onnx" -o "$W/fusion" --name fusion --version 1 --force --sample "$W/fusion_sample.npz"
edgefleet predict "$W/fusion" --input "$W/fusion_sample.npz"
python scripts/recipes/fusion_predict.py "$W/fusion"

step "recipe 3: a vision model with dynamic height and width"
# synthetic smoke inputs (H = W = 1) cannot run a 3x3 convolution: pack says so, then takes a real sample
edgefleet pack "$W/detector.onnx" -o "$W/detector" --name detector --version 1 --force \
    || echo "(exit $?: as expected, pack asks for --sample)"
edgefleet pack "$W/detector.onnx" -o "$W/detector" --name detector --version 1 --force --sample "$W/detector_sample.npz"
python scripts/recipes/detector_sizes.py "$W/detector"
edgefleet bench "$W/detector" --runs 20 || echo "(exit $?: bench names the dynamic dimensions)"
edgefleet bench "$W/detector" --runs 20 --input-shape image=1x3x480x640 | tail -2
