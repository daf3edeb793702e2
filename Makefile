# The template's two commands: `make demo` and `make test`. `make help` lists all targets.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
DEMO := build/demo/acme-widgets-api

.DEFAULT_GOAL := help
.PHONY: help demo test bench-bake bench bench-server lock lock-upgrade system-deps clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r tests/requirements.txt
	touch $@

demo: $(VENV)/.installed ## bake a service with the defaults and serve it on https://localhost:8443
	rm -rf build/demo
	$(BIN)/cookiecutter . --no-input --output-dir build/demo
	cd $(DEMO) && $(BIN)/python scripts/dev_cert.py .dev
	@echo
	@echo "Serving https://localhost:8443 (Ctrl-C stops it). From another terminal:"
	@echo "  cd $(DEMO) && <the curl command printed above>"
	@echo
	cd $(DEMO) && APP_ENV=development PYTHONPATH=src $(BIN)/gunicorn

system-deps: ## install redis-server and testssl.sh with apt-get when missing
	@scripts/system-deps.sh

test: $(VENV)/.installed system-deps ## run the template's whole test suite
	$(BIN)/python -m pytest

# The evidence that the template is right, measured on a fresh bake of it (bench/README.md).
BENCH_BAKE := build/bench/acme-widgets-api

bench-bake: $(VENV)/.installed
	rm -rf build/bench
	$(BIN)/cookiecutter . --no-input --output-dir build/bench >/dev/null

bench: bench-bake ## in-process: key lookup (1 vs 5,000 keys), log masking, the stack vs bare Flask
	$(BIN)/python bench/bench_keys.py --project $(BENCH_BAKE)
	$(BIN)/python bench/bench_log_filter.py --project $(BENCH_BAKE)
	$(BIN)/python bench/inprocess.py --project $(BENCH_BAKE)

bench-server: bench-bake ## under gunicorn and wrk (needs wrk, redis-server; minutes), the memory probe
	$(BIN)/python bench/run.py --project $(BENCH_BAKE)
	$(BIN)/python bench/guess_memory.py --project $(BENCH_BAKE)

lock: $(VENV)/.installed ## re-lock each lock set in templates/locks from the pyproject.toml it bakes
	$(BIN)/python scripts/lock.py

lock-upgrade: $(VENV)/.installed ## the same, moving every pin to its newest release
	$(BIN)/python scripts/lock.py --upgrade

clean: ## remove the virtualenv, demo bakes and reports
	rm -rf $(VENV) build reports
