# The two commands a fresh machine needs (both create .venv and install what they need):
#   make serve   run the proxy with its embedded defaults (see `understudy up --help`)
#   make test    run the whole default test suite (installs the Debian packages it needs first)
.PHONY: serve test test-slow lint docs bench venv machine-packages

ARGS ?=

venv:
	./scripts/bootstrap.sh

serve: venv
	.venv/bin/understudy up $(ARGS)

machine-packages:
	./scripts/machine_packages.sh

# The suite runs on two pytest-xdist workers (tests/conftest.py: which tests share a worker, and
# the order they are handed out in); `make test PARALLEL=` runs it in one process.
PARALLEL ?= -n 2 --dist loadgroup --no-loadscope-reorder

test: venv machine-packages
	.venv/bin/python -m pytest $(PARALLEL) $(ARGS)

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

docs: venv
	.venv/bin/python scripts/cli_reference.py

test-slow: venv machine-packages
	.venv/bin/python -m pytest -m slow $(ARGS)

bench: venv
	.venv/bin/python benchmarks/proxy_overhead.py $(ARGS)
