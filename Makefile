# Every target creates .venv if missing and installs torch==2.13.0 (CPU build) before the
# project, so pip never resolves an open-ended torch requirement to a CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  ?= dev,minatar,popgym,atari,dmc,ray
BENCH   := $(VENV)/.installed-bench
DEMO    := runs/demo

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# trains the default agent (CartPole-v1, Mamba-2 world model); a second `make demo` resumes or
# reuses the finished run instead of refusing to overwrite it
demo: $(STAMP)
	if [ -f $(DEMO)/config.yaml ]; then $(BIN)/reverie train --resume $(DEMO); \
	else $(BIN)/reverie train --out $(DEMO); fi
	$(BIN)/reverie eval $(DEMO) --episodes 5
	$(BIN)/reverie watch $(DEMO)

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -x tests

# sheeprl (the DreamerV3 peer of bench/throughput.py) in its own venv, made only by `bench`;
# torch first, so pip keeps the CPU build (see bench/peers/README.md).
SHEEPRL := .venv-sheeprl/bin/sheeprl

$(SHEEPRL):
	$(PY) -m venv .venv-sheeprl
	.venv-sheeprl/bin/pip install -q torch==2.13.0
	.venv-sheeprl/bin/pip install -q sheeprl==0.8.4

$(BENCH): $(STAMP)
	$(BIN)/pip install -q -e ".[$(EXTRAS),bench]"
	touch $(BENCH)

bench: $(BENCH) $(SHEEPRL)
	$(BIN)/python bench/backbones.py
	$(BIN)/python bench/cartpole.py
	$(BIN)/python bench/dfs.py --reuse-cartpole
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/throughput.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
