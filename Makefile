# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU-only torch pin for this machine; set CONSTRAINTS= to install your own torch build.
CONSTRAINTS ?= -c constraints.txt
DEMO   ?= demo

# Tests and the demo never touch a model hub: a stray hub id fails at once.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-t5 test install lint clean bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e ".[dev,kfp]"
	touch $@

install: $(STAMP)

# The main job on the offline demo world: data -> model -> pipeline -> report.
# A second `make demo` reuses the data, the model and every finished pipeline stage.
# The run is pinned as `rlhfkit demo model` pins its build: 2 torch threads and AVX2 kernels
# (threads and instruction set change float summation order), so its figures are the same
# on one CPU model whatever its core count or load (not across vendors: README).
DEMO_PIN := OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
demo: $(DEMO)/data/world.json $(DEMO)/model/config.json
	$(DEMO_PIN) $(BIN)/rlhfkit run examples/demo/params.json --output-dir $(DEMO)/run

$(DEMO)/data/world.json: | $(STAMP)
	$(BIN)/rlhfkit demo data $(DEMO)/data

$(DEMO)/model/config.json: | $(STAMP)
	$(BIN)/rlhfkit demo model $(DEMO)/model

# The same pipeline on an encoder-decoder (T5) demo model (docs/rl.md, "T5").
demo-t5: $(DEMO)/data/world.json $(DEMO)/model-t5/config.json
	$(DEMO_PIN) $(BIN)/rlhfkit run examples/demo-t5/params.json --output-dir $(DEMO)/run-t5

$(DEMO)/model-t5/config.json: | $(STAMP)
	$(BIN)/rlhfkit demo model $(DEMO)/model-t5 --arch t5

# The browser tests (labeling page, report) drive the system's Chromium; install it once.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: browser tests skip (and fail under CI=true)"
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e ".[bench]"
	$(BIN)/python benchmarks/reward_vs_trl.py
	$(BIN)/python benchmarks/ppo_vs_trl.py

clean:
	rm -rf $(VENV) $(DEMO)
