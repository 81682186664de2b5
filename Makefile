# Two entry points: `make demo` and `make test`. Both create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Pinned here (pyproject.toml states ranges): these builds lie on this kind of machine's disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= runs/demo

.PHONY: setup browser demo serve test lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev,distributed,heif,backbones,metric,ocr]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/phonesim demo --workdir $(DEMO_DIR)

# The web-page test drives Debian's chromium; install it when we can (root, a package mirror),
# else it skips: an offline machine still runs every other test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	      echo "chromium could not be installed: the browser test will skip"; \
	  else echo "chromium not installed (needs root): the browser test will skip"; fi; }

serve: setup
	$(BIN)/phonesim serve --checkpoint $(DEMO_DIR)/checkpoint --index $(DEMO_DIR)/index

test: setup browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
