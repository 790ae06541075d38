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

.PHONY: setup run test lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: matte the official demo photos into ./out/.
run: $(STAMP)
	$(BIN)/matte p "$(SHARED)/u2net-official-testdata/test_images" "$(OUT)" --model lite \
	  $$(test -f "$(SHARED)/u2netp-onnx/u2netp.onnx" && echo --weights "$(SHARED)/u2netp-onnx/u2netp.onnx")
	@echo "Cut-outs written to $(abspath $(OUT))"

test: $(STAMP)
	$(BIN)/ruff check model pipelines flows tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check model pipelines flows tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/inference.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
