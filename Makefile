# Smart Dispatch — the two commands: `make serve` and `make test`. `.ci/run` calls `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pin glibc's malloc thresholds: durable-rules' throughput is bimodal without it (docs/rules-engine.md).
export MALLOC_MMAP_THRESHOLD_ ?= 1048576
export MALLOC_TRIM_THRESHOLD_ ?= 268435456

.PHONY: setup serve test lint fmt gen check-gen breaking bench clean browser image-smoke
# Playwright drives Debian's chromium (tests/console); it must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/smart-dispatch serve --host 127.0.0.1 --port 50051 --rules rules --store memory://

test: $(STAMP) check-gen browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The browser the console tests drive: Debian's chromium, installed when missing (as root, or
# with sudo when there is one). Where it cannot be installed the browser tests skip, except
# under CI=true, where they fail.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; \
	  else echo "chromium is missing and this is not root: the browser tests will skip"; exit 0; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "chromium is missing (no apt-get here)"; exit 0; fi; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium \
	    || echo "could not install chromium: the browser tests will skip (fail under CI=true)"; }

# The image built from the Dockerfile and smoke-tested with podman on a stand-in base
# (scripts/image_smoke.sh: needs root and apt-get; installs what it lacks; a few minutes, the
# base is cached). `.ci/run` runs it after `make test`.
image-smoke: $(STAMP)
	PY=$(PY) scripts/image_smoke.sh

lint: $(STAMP) check-gen
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/ruff format --check server tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint

fmt: $(STAMP)
	$(VENV)/bin/ruff format server tests bench
	$(VENV)/bin/ruff check --fix server tests bench

gen: $(STAMP)
	PY=$(PY) scripts/gen_proto.sh

# Fails when the checked-in generated code differs from what proto/ generates.
check-gen: $(STAMP)
	@tmp=$$(mktemp -d); cp -r server/smart_dispatch/_proto $$tmp/before; \
	PY=$(PY) scripts/gen_proto.sh; \
	if ! diff -r -x __pycache__ $$tmp/before server/smart_dispatch/_proto >/dev/null; then \
	  diff -r -x __pycache__ $$tmp/before server/smart_dispatch/_proto | head -20; \
	  echo "generated code drifted from proto/: run 'make gen' and commit"; rm -rf $$tmp; exit 1; fi; \
	rm -rf $$tmp; echo "check-gen: generated code matches proto/"

# Fails when proto/ breaks the API of the previous commit (buf.yaml `breaking` rules);
# AGAINST=<ref> compares with another commit.
breaking: $(STAMP)
	BUF=$(VENV)/bin/buf scripts/buf_breaking.sh $(AGAINST)

bench: $(STAMP)
	$(PY) bench/decide.py
	$(PY) bench/counters.py
	$(PY) bench/dispatch.py
	$(PY) bench/dispatch.py --backlog 50000
	$(PY) bench/batch.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/interop/node/node_modules
