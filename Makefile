# Two entry points for a fresh machine: `make run` (demo on embedded defaults) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# --isolated: ignore machine pip config that may point at a local CPU-only torch wheel,
# which cannot load the registry's torchvision ("operator torchvision::nms does not exist").
CA_BUNDLE := $(wildcard /etc/ssl/certs/ca-certificates.crt)
PIP := $(BIN)/pip --isolated --disable-pip-version-check $(if $(CA_BUNDLE),--cert $(CA_BUNDLE))
TORCH_PINS := "torch==2.13.*" "torchvision==0.28.*"

.PHONY: setup sysdeps run test clean

$(BIN)/fpnstream: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[test]"
	$(BIN)/python -c "import torch, torchvision, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"
	touch $@

setup: $(BIN)/fpnstream

run: setup
	test -f data/demo.mp4 || $(BIN)/fpnstream synth data/demo.mp4
	$(BIN)/fpnstream run --config configs/default.yaml
	$(BIN)/fpnstream tail --count 3

sysdeps:
	bash scripts/system-deps.sh

# Two test processes: most tests wait on Ray start-up, sockets and paced video, not the CPU
# (one process kept 2 cores ~27 % busy); worksteal evens out the long fault tests.
test: setup sysdeps
	$(BIN)/python -m pytest -q -n 2 --dist worksteal tests

clean:
	rm -rf $(VENV) .fpnstream data
