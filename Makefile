# One command to set up and serve, one to test. Everything installs into ./.venv.
# `make serve` installs only the `serve` extra (FastAPI, onnxruntime, sentencepiece, numpy: no torch);
# `make test` (and `make install`) add the `train` and `dev` extras. A stamp file per set records what the
# environment holds, so each command installs only what it lacks.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BUNDLES ?= bundles
SERVE_STAMP := $(VENV)/.installed-serve
ALL_STAMP   := $(VENV)/.installed-all

.PHONY: install install-serve check-bundles serve test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

$(ALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $@ $(SERVE_STAMP)

install-serve: $(SERVE_STAMP)  ## create .venv with the web service only (the serve extra)

install: $(ALL_STAMP)  ## create .venv with every extra: training, serving, tests

check-bundles:  ## is there a bundle in $(BUNDLES)/ (a bundle itself, or a folder of bundles)?
	@if ! ls $(BUNDLES)/*/bundle.json >/dev/null 2>&1 && ! test -f $(BUNDLES)/bundle.json; then \
		echo "make serve: no bundle in $(BUNDLES)/ (a folder holding bundle.json, or a folder of them):" \
			"make one with 'pocketbert export' (see README) or set BUNDLES=DIR" >&2; \
		exit 2; \
	fi

serve: install-serve check-bundles  ## start the web API on the bundled model(s) at http://127.0.0.1:8000
	$(BIN)/python -m app.serve --bundles $(BUNDLES)

test: install  ## lint (ruff check + ruff format --check), then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .schemathesis schemathesis-report build *.egg-info
