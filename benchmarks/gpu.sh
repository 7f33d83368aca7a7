#!/usr/bin/env bash
# The GPU benchmark, run as is on a bare GPU machine that has torch and torchvision and
# nothing else: installs benchmarks/gpu-requirements.txt from the wheels beside this script
# (benchmarks/wheels, made by benchmarks/gpu-wheels.sh on a machine with internet; from the
# package index when that folder is empty), runs the GPU tests, then `fpnstream bench` for
# fasterrcnn_resnet50_fpn at 1280x720 x 16 streams, fp16 + compiled, and writes
# $OUT/bench.{json,md,png}, $OUT/feed.json and $OUT/gpu-tests.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out-gpu}
WHEELS=benchmarks/wheels
mkdir -p "$OUT"
# REHEARSE=1: the same steps on a machine without a GPU (the CPU, a small model and input,
# no fp16 or compile), to check that the install and every command work before device time
# is spent; its figures are not GPU figures.
if [ "${REHEARSE:-0}" = 1 ]; then
  bench=(--model fasterrcnn_mobilenet_v3_large_320_fpn --size 320x180 --clips 2 --frames 3 --batch-size 2 --device cpu)
  feed=(--size 320x180 --clips 2 --frames 20 --batch-size 8)
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: torch sees no CUDA device')"
  bench=(--model fasterrcnn_resnet50_fpn --size 1280x720 --clips 16 --frames 30 --batch-size 8 --device cuda
         --precision fp16 --compile)
  feed=(--size 1280x720 --clips 4 --frames 120 --batch-size 8)
fi
src=()
if compgen -G "$WHEELS/*.whl" >/dev/null; then src=(--no-index --find-links "$WHEELS"); fi
# torch and torchvision stay as they are (the image's CUDA build): nothing listed needs them.
# What the machine has already is kept; a wheel missing from the folder fails here, by name.
"$PY" -m pip install -q --disable-pip-version-check "${src[@]}" -r benchmarks/gpu-requirements.txt
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" | tee "$OUT/versions.txt"
# A failing GPU test does not stop the bench (device time is scarce); it fails the script at the end.
tests=0
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/detection 2>&1 | tee "$OUT/gpu-tests.txt" || tests=$?
"$PY" -m fpnstream bench "${bench[@]}" --no-ray --out "$OUT" | tee "$OUT/bench-stdout.md"
"$PY" -m fpnstream bench --feed "${feed[@]}" --out "$OUT" | tee -a "$OUT/bench-stdout.md"
echo "gpu.sh: results in $OUT"
if [ "$tests" != 0 ]; then echo "gpu.sh: GPU tests failed (see $OUT/gpu-tests.txt)" >&2; exit "$tests"; fi
