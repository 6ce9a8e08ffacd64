# The whole set-up on a fresh machine is `make demo` or `make test`: both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: install browser demo test bench zoo clean

install: $(STAMP)

# Torch comes from the CPU wheel pinned in constraints.txt; installing it first keeps any
# dependency from pulling a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default: a 20-layer plain sigmoid MLP on the digits data.
# --overwrite lets it run again; it replaces demo/ only when demo/ holds this demo's own diagnosis.
demo: $(STAMP)
	@test ! -e demo || $(BIN)/python -c "import json, sys; from gradhealth.checkup import DEFAULT_MODEL; \
		sys.exit(json.load(open('demo/findings.json')).get('model') != DEFAULT_MODEL)" 2>/dev/null || \
		{ echo "demo/ holds something other than this demo's outputs; move it away first." >&2; exit 1; }
	$(BIN)/gradhealth diagnose --out demo --overwrite

# The report's browser test renders pages in headless Chromium from Debian's package.
browser:
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The benchmarks run in their own .venv-bench, which adds the peers they measure (the `bench`
# extra, see pyproject.toml) with --no-deps so that BackPACK's declared torchvision stays out;
# `make test` does not need any of it.
$(BENCH_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install --quiet -c constraints.txt torch
	$(BENCH_BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BENCH_BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))" > $(BENCH_VENV)/bench-requirements.txt
	$(BENCH_BIN)/pip install --quiet --no-deps -c constraints.txt -r $(BENCH_VENV)/bench-requirements.txt
	$(BENCH_BIN)/python -c "import backpack, cockpit, lightning.pytorch"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_BIN)/python benchmarks/run_all.py

# Only the diagnosis benchmark over the zoo of architectures (a few minutes on 2 cores), its
# section of BENCHMARKS.md rewritten; `python benchmarks/zoo/run.py --record` keeps its figures
# as the ones tests/test_zoo.py compares against.
zoo: $(STAMP)
	$(BIN)/python benchmarks/zoo/run.py --markdown BENCHMARKS.md

clean:
	rm -rf $(VENV) $(BENCH_VENV) .cache build src/*.egg-info
