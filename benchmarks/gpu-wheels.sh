#!/usr/bin/env bash
# Fill benchmarks/wheels with what benchmarks/gpu.sh installs (benchmarks/gpu-requirements.txt
# and everything those need), for a GPU machine without internet. Carry the folder with the
# tree (it is ignored by git).
#   PYVER    the GPU machine's Python (default 3.12: the lent H200 image has 3.12.3)
#   EXCLUDE  names the machine already has, left out so the folder stays small. For the
#            lent H200 image (package list in the device tool's KINDS.md), which carries at
#            most 64 MiB with the tree: EXCLUDE=lent-image
set -euo pipefail
cd "$(dirname "$0")"
PYVER=${PYVER:-3.12}
EXCLUDE=${EXCLUDE:-}
if [ "$EXCLUDE" = lent-image ]; then
  EXCLUDE="numpy pillow pyyaml rich markdown-it-py mdurl pygments prometheus-client pytest pluggy iniconfig packaging
    pytest-timeout hypothesis attrs sortedcontainers psutil setuptools matplotlib contourpy cycler fonttools kiwisolver
    pyparsing python-dateutil six"
fi
rm -rf wheels && mkdir wheels
pip --isolated --disable-pip-version-check download -q --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels -r gpu-requirements.txt
for name in $EXCLUDE; do  # wheel file names spell a project's - and . as _
  rm -f wheels/"$(echo "$name" | tr -- '-.' '__')"-[0-9]*.whl
done
ls wheels
du -sh wheels
