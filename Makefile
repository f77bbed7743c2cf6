# The one interface, used the same way locally and by CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest docs docs-serve bench bench-instructions clean

# Bootstrap: a virtual environment with pinned tools and both packages installed editable.
$(STAMP): pyproject.toml fakes/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements-dev.txt -e ./fakes -e '.[yaml,server,redis,postgres,metrics,otel]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job on embedded defaults: fake providers on loopback, no keys
	$(BIN)/waterfall-asgi demo

test: lint typecheck pytest docs  ## everything CI checks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(VENV)/site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

BENCH_EXTRA := $(VENV)/bench
$(BENCH_EXTRA)/.installed: $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade \
		--target $(BENCH_EXTRA) -r requirements-bench.txt
	touch $@

bench: $(BENCH_EXTRA)/.installed  ## the benchmark suite (never part of test); BENCH_ARGS=--quick
	PYTHONPATH=$(BENCH_EXTRA) $(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	PYTHONPATH=$(BENCH_EXTRA) $(BIN)/python benchmarks/streams.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/micro.py $(BENCH_ARGS)

bench-instructions: $(STAMP)  ## the router's own instructions per request (needs valgrind)
	$(BIN)/python benchmarks/instructions.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
