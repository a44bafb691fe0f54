# Every target sets itself up: a virtual environment in .venv with the package installed
# editable (and its dev tools), rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart demo test test-fast lint format browser

# pytest runs with HOME set to an empty folder of its own, removed afterwards: no state in
# anyone's home folder (a Ray token in ~/.ray, MLflow or torch caches) can make a test pass or
# fail. The install step keeps the real HOME: pip's configuration and Python live there.
in_empty_home = home=$$(mktemp -d) && HOME=$$home $(1); status=$$?; rm -rf $$home; exit $$status

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/boxinst sweep quickstart

demo: $(STAMP)
	$(BIN)/boxinst demo

# The comparison report is checked in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Chromium (Debian's package) for the report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(call in_empty_home,$(BIN)/python -m pytest)

test-fast: $(STAMP)
	$(call in_empty_home,$(BIN)/python -m pytest -m "not slow")

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
