# Every target creates .venv if missing and installs torch==2.13.0 alone before the project,
# so pip never resolves an open-ended torch requirement (a CUDA build, gigabytes). Which build
# the pin gets depends on the index: TORCH_PIP_ARGS="--index-url
# https://download.pytorch.org/whl/cpu" asks for the CPU build where PyPI serves CUDA's.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  ?= dev,minatar,popgym,atari,dmc,ray
TORCH_PIP_ARGS ?=
BENCH   := $(VENV)/.installed-bench
DEMO    := runs/demo

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# trains the default agent (CartPole-v1, Mamba-2 world model); a second `make demo` resumes or
# reuses the finished run instead of refusing to overwrite it
demo: $(STAMP)
	if [ -f $(DEMO)/config.yaml ]; then $(BIN)/reverie train --resume $(DEMO); \
	else $(BIN)/reverie train --out $(DEMO); fi
	$(BIN)/reverie eval $(DEMO) --episodes 5
	$(BIN)/reverie watch $(DEMO)

# one test process per core (pytest-xdist): each test runs single-threaded (tests/conftest.py),
# so a serial suite left the other cores idle; at most 8 (each holds torch in memory)
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -x -n auto --maxprocesses 8 tests

# sheeprl (the DreamerV3 peer of bench/throughput.py) in its own venv, made only by `bench`;
# torch first, so pip keeps the CPU build (see bench/peers/README.md).
SHEEPRL := .venv-sheeprl/bin/sheeprl

$(SHEEPRL):
	$(PY) -m venv .venv-sheeprl
	.venv-sheeprl/bin/pip install -q torch==2.13.0
	.venv-sheeprl/bin/pip install -q sheeprl==0.8.4

# mbrl-lib (the GaussianMLP ensemble peer of bench/ensemble_speed.py) in its own venv, made
# only by `bench`: torch first, then mbrl 0.2.0 (which pins hydra-core 1.0.3 / omegaconf 2.0,
# whose dataclasses fail to import on Python 3.11), then hydra-core 1.3.2 / omegaconf 2.3.0
# (and the antlr runtime they need) forced over those pins without resolving dependencies.
MBRL := .venv-mbrl/.installed

$(MBRL):
	$(PY) -m venv .venv-mbrl
	.venv-mbrl/bin/pip install -q torch==2.13.0
	.venv-mbrl/bin/pip install -q mbrl==0.2.0
	.venv-mbrl/bin/pip install -q --no-deps hydra-core==1.3.2 omegaconf==2.3.0 \
		antlr4-python3-runtime==4.9.3
	.venv-mbrl/bin/python -c "import mbrl.models"
	touch $(MBRL)

$(BENCH): $(STAMP)
	$(BIN)/pip install -q -e ".[$(EXTRAS),bench]"
	touch $(BENCH)

bench: $(BENCH) $(SHEEPRL) $(MBRL)
	$(BIN)/python bench/backbones.py
	$(BIN)/python bench/cartpole.py
	$(BIN)/python bench/dfs.py --reuse-cartpole
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/ensemble_speed.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
