# The two commands of the quick start, `make run` and `make test`, set everything up themselves:
# the virtual environment, the Python packages and the npm packages the interop tests use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := tests/interop/node_modules/.installed-stamp
TOOLS  := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp

.PHONY: run test bench fuzz soak venv npm tools browser clean help

help:
	@echo "make run    set up and run the gateway on its embedded demo (127.0.0.1)"
	@echo "make test   set up and run every test"
	@echo "make bench  measure the gateway against the upstream, nginx and a plain proxy (BENCH_QUICK=1: short); writes BENCHMARKS.md"
	@echo "make soak   soak the gateway under hostile load with injected faults (SOAK_S=600 s); writes RELIABILITY.md"
	@echo "make fuzz   fuzz the parsers, filters and config loader with atheris for FUZZ_S seconds (default 300)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo]'
	@touch $@

venv: $(STAMP)

# The interop tests' real parts (an authorization server, MCP clients and servers) come from npm.
$(NODE_STAMP): tests/interop/package.json tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
	@touch $@

npm: $(NODE_STAMP)

# A real browser for the browser-origin interop test (tests/interop/test_typescript_sdk.py): Debian's chromium.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } || \
		{ echo "the browser interop test needs chromium (Debian: apt-get install chromium)"; exit 1; }

# Linters and scanners for deploy/ live in their own environment so they never pin the gateway's packages;
# kubectl renders the manifests and promtool (Debian's prometheus package) checks the alerting rules.
$(TOOLS_STAMP): deploy/requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet -r deploy/requirements-tools.txt
	@command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubernetes-client; } || \
		{ echo "the deployment tests need kubectl (Debian: apt-get install kubernetes-client)"; exit 1; }
	@touch $@

# Checked on every run, not behind the stamp, so a checkout whose tools were installed before it still gets it.
tools: $(TOOLS_STAMP)
	@command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus; } || \
		{ echo "the alerting-rule tests need promtool (Debian: apt-get install prometheus)"; exit 1; }

run: venv
	$(VENV)/bin/mcp-auth-gateway demo

test: venv npm tools browser
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; } || \
		{ echo "the S2 tests need redis-server (Debian: apt-get install redis-server)"; exit 1; }
	$(PY) -m pytest

# P6: wrk drives the load, nginx (Debian's package) is the floor for any proxy; both installed on first use.
# BENCH_QUICK=1: short runs for working on bench/ (not for BENCHMARKS.md); the full run takes about 7 minutes.
bench: venv
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || \
		{ echo "make bench needs wrk (Debian/Ubuntu: apt-get install wrk)"; exit 1; }
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -qq && apt-get install -y -qq nginx; } || \
		{ echo "make bench needs nginx (Debian/Ubuntu: apt-get install nginx)"; exit 1; }
	$(PY) bench/run.py $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

# R5: coverage-guided fuzzing; its extra (atheris) is installed on first use, guarded by its own stamp.
FUZZ_STAMP := $(VENV)/.fuzz-installed-stamp
FUZZ_S ?= 300

$(FUZZ_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,fuzz]'
	@touch $@

fuzz: $(FUZZ_STAMP)
	FUZZ_S=$(FUZZ_S) $(PY) fuzz/run.py

# R7: every part on 127.0.0.1, started and stopped by bench/soak.py; exits 1 when a criterion fails.
SOAK_S ?= 600
soak: venv
	SOAK_S=$(SOAK_S) $(PY) bench/soak.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache tests/interop/node_modules
