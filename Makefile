# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# installed before the project, so nothing pulls another torch: 2.14.1 with torchvision 0.29.1 (a CUDA build that
# runs on the CPU; torchvision cannot load beside the CPU-only 2.13 wheel), for the torchvision-* tasks
TORCH  := torch==2.14.1 torchvision==0.29.1
# the conformance suite's architectures, test-only: installed beside the pinned torch, never a requirement of the
# package (ultralytics is AGPL)
CONFORMANCE := "timm>=1.0" "ultralytics>=8.3"
DEBS   := dataset-fashion-mnist openssh-server openssh-client chromium

.PHONY: setup demo test bench bench-page profiles clean

$(BIN)/edgeprune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q $(TORCH) $(CONFORMANCE)
	@# From Debian, where apt exists and we may use it: Fashion-MNIST (fashion-autoencoder task), OpenSSH
	@# (the device tests run a real sshd on localhost) and Chromium (the report test renders the HTML page)
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	  || echo "note: could not install$$missing from Debian"; fi
	touch $(BIN)/edgeprune

setup: $(BIN)/edgeprune

demo: setup
	rm -rf runs/demo
	$(BIN)/edgeprune tune --out runs/demo

test: setup
	$(BIN)/lint-imports && $(BIN)/python -m pytest -q

# every benchmark (bench/*.py but the page), then the comparison page and the README's headline table
bench: setup
	for script in $(filter-out bench/compare.py,$(wildcard bench/*.py)); do $(BIN)/python $$script || exit 1; done
	$(MAKE) bench-page

# only the page and the README table, from the CSVs already in bench/results/ (measures nothing)
bench-page: setup
	$(BIN)/python bench/compare.py --readme README.md

# the built-in tasks' dense profiles and cost models on the cpu target, into profiles/ (timed: run it alone)
profiles: setup
	$(BIN)/python profiles/measure.py

clean:
	rm -rf $(VENV) runs build *.egg-info
