# The template's two commands: `make demo` and `make test`. `make help` lists all targets.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
DEMO := build/demo/acme-widgets-api

.DEFAULT_GOAL := help
.PHONY: help demo test bench-bake bench bench-server lock lock-upgrade system-deps clean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## / {name[++n] = $$1; text[n] = $$2; if (length($$1) > width) width = length($$1)} \
		END {for (i = 1; i <= n; i++) printf "  %-" width "s  %s\n", name[i], text[i]}' $(MAKEFILE_LIST)

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r tests/requirements.txt
	touch $@

# The demo's own virtualenv: Cookiecutter, then the bake's runtime lock and the certificate
# tool pinned in its dev lock (hashes checked), not the template's test toolchain.
DEMO_VENV := build/demo-venv
DEMO_BIN := $(abspath $(DEMO_VENV))/bin
# The locked packages that dev_cert.py needs: cryptography and what it installs with.
CERT_PINS := ^(cryptography|cffi|pycparser)==

$(DEMO_VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_BIN)/python -m pip install --quiet --upgrade pip
	$(DEMO_BIN)/python -m pip install --quiet "$$(grep -E '^cookiecutter[<>=]' tests/requirements.txt)"
	touch $@

demo: $(DEMO_VENV)/.installed ## bake a service with the defaults and serve it on https://localhost:8443
	rm -rf build/demo
	$(DEMO_BIN)/cookiecutter . --no-input --output-dir build/demo > build/demo-bake.txt
	cd $(DEMO) && awk '/^[^ #]/ {keep = $$1 ~ /$(CERT_PINS)/} keep' requirements-dev.txt > ../../demo-cert-requirements.txt \
		&& $(DEMO_BIN)/python -m pip install --quiet --require-hashes -r requirements.txt -r ../../demo-cert-requirements.txt \
		&& $(DEMO_BIN)/python scripts/dev_cert.py .dev
	@key=$$(sed -n '/^Development key/{n;s/^ *//p;}' build/demo-bake.txt); echo; \
	echo "Serving https://localhost:8443 (Ctrl-C stops it). From another terminal:"; \
	echo "  cd $(DEMO) && curl --cacert .dev/localhost.pem -H \"Authorization: Bearer $$key\" https://localhost:8443/v1/whoami"; \
	echo
	cd $(DEMO) && APP_ENV=development PYTHONPATH=src $(DEMO_BIN)/gunicorn

system-deps: ## install redis-server, testssl.sh and PostgreSQL's server with apt-get when missing
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
