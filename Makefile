# One command to set up and serve, one to test. Everything installs into ./.venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BUNDLES ?= bundles

.PHONY: install serve test lint clean

$(BIN)/pocketbert: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $@

install: $(BIN)/pocketbert  ## create .venv and install the project with every extra

serve: install  ## start the web API on the bundled model(s) at http://127.0.0.1:8000
	@ls $(BUNDLES)/*/bundle.json $(BUNDLES)/bundle.json >/dev/null 2>&1 || echo "note: no bundle in $(BUNDLES)/ yet:" \
		"make one with 'pocketbert export' (see README) or set BUNDLES=DIR; /readyz reports what is missing"
	$(BIN)/pocketbert serve --bundles $(BUNDLES)

test: install  ## lint (ruff check + ruff format --check), then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
