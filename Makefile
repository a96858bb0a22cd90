# Taskloom developer tasks. `make run` and `make test` bootstrap .venv on a fresh machine that
# has only python3 (>= 3.11, with its venv module) and make.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint format clean install

## install: create .venv and install Taskloom with its dev tools and the embedded servers
## (again when pyproject changes)
install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Taskloom needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
		  "Run e.g. make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "error: $(PYTHON) -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"; \
		  rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	@touch $@

## run: start Taskloom (embedded PostgreSQL and Redis unless DATABASE_URL / REDIS_URL are set)
run: $(STAMP)
	$(BIN)/taskloom up

## test: run the test suite; pass options with PYTEST_ARGS="-k auth -x"
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## lint: ruff lint, ruff format check, mypy (strict, configured in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## format: apply ruff fixes and formatting
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## clean: remove the virtualenv, caches and build output (keeps the .taskloom data directory)
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
