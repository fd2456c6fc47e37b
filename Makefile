# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# the CPU build, installed before the project so that nothing pulls a CUDA torch
TORCH  := torch==2.13.0

.PHONY: setup demo test bench clean

$(BIN)/edgeprune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	@# Fashion-MNIST for the fashion-autoencoder task, from Debian, where apt exists and we may use it
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || echo "note: dataset-fashion-mnist not installed; fashion-autoencoder will be unavailable"; fi
	touch $(BIN)/edgeprune

setup: $(BIN)/edgeprune

demo: setup
	rm -rf runs/demo
	$(BIN)/edgeprune tune --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
