# The whole set-up on a fresh machine is `make demo` or `make test`: both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: install browser demo test bench clean

install: $(STAMP)

# Torch comes from the CPU wheel pinned in constraints.txt; installing it first keeps any
# dependency from pulling a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default: a 20-layer plain sigmoid MLP on the digits data.
demo: $(STAMP)
	$(BIN)/gradhealth diagnose --out demo

# The report's browser test renders pages in headless Chromium from Debian's package.
browser:
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .cache build src/*.egg-info
