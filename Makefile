# Taskloom developer tasks. `make run` and `make test` bootstrap .venv on a fresh machine that
# has only python3 (>= 3.11, with its venv module) and make.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make lock LOCK_ARGS=--upgrade: move every pin to the newest release pyproject allows.
# --universal: one lock for every Python >= 3.11 and platform (markers on conditional pins, e.g.
# async-timeout below Python 3.11.3), so a fresh machine's own python3 installs it too.
LOCK_ARGS ?=
LOCK = $(BIN)/uv pip compile pyproject.toml --quiet --universal --generate-hashes \
	$(LOCK_ARGS)

.PHONY: run test lint format clean install lock

## install: create .venv and install Taskloom with its dev tools and the embedded servers, at
## the versions and hashes of requirements-dev.lock (again when it or pyproject changes)
install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Taskloom needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1)." \
		  "Run e.g. make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "error: $(PYTHON) -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"; \
		  rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; \
		echo "error: requirements-dev.lock does not satisfy pyproject.toml: run make lock"; exit 1; }
	@touch $@

## lock: regenerate requirements.lock (runtime: the image) and requirements-dev.lock (dev and
## embedded extras: make install) from pyproject.toml with uv (bootstrapped into .venv with pip);
## existing pins are kept
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.9,<1'
	$(LOCK) -o requirements.lock
	$(LOCK) --extra dev --extra embedded -o requirements-dev.lock

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

## clean: remove the virtualenv, caches, build output and the SSO tests' npm packages (keeps the
## .taskloom data directory)
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info \
		tests/oidc/provider/node_modules
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
