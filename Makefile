# Two commands set up a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared/data)
OUT ?= out

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND ?= tensorflow
export SHARED_DATA := $(SHARED)

.PHONY: setup browser run server test lint bench bench-venv clean

# The runtime lock plus the test tools (requirements-test.txt includes requirements.txt).
# tensorflow-cpu is removed first: a venv made before the lock named `tensorflow` has it, and
# both install the same `tensorflow` package folder.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -q -y tensorflow-cpu
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the dashboard screenshot test (Debian package; needs root or skips).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "chromium not installed: the dashboard screenshot test will skip"

# The main job on the embedded default: one nightly-matting flow run (ephemeral Prefect API,
# Beam DirectRunner) over the official demo photos into ./out/, with the official U²-Net†.
run: $(STAMP)
	$(BIN)/python -m flows.matting_flow "$(SHARED)/u2net-official-testdata/test_images" \
	  "$(OUT)" --model "$(SHARED)/u2netp-onnx/u2netp.onnx"

# A real Prefect server on 127.0.0.1:4200 + a process worker + prefect.yaml's deployments,
# and one triggered nightly-matting run; the dashboard is at http://127.0.0.1:4200.
server: $(STAMP)
	$(BIN)/python -m flows.local_stack up --port 4200 --shared "$(SHARED)"

test: lint browser
	$(BIN)/python -m pytest -q --durations=12

lint: $(STAMP)
	$(BIN)/ruff check storage model operations pipelines flows cli tests benchmarks

# rembg for benchmarks/vs_rembg.py, in its own venv: its pins conflict with ours (pyproject's
# bench extra says why).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
$(BENCH_STAMP): requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -r requirements-bench.txt
	$(BENCH_VENV)/bin/python -m pip check
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/vs_rembg.py --rembg $(BENCH_VENV)/bin/rembg

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(OUT) .pytest_cache
