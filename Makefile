# The README contract: `make demo` and `make test` set up .venv when needed, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-install
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo demo-quick test test-fast lint clean device-wheels

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stguide demo --out stguide-demo

demo-quick: $(STAMP)
	$(VENV)/bin/stguide demo --quick --out stguide-demo-quick

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

# the packages a lent GPU machine lacks, for benchmarks/device/stage2.sh (Python 3.12, x86-64 wheels; .whl/ is ignored)
device-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl -r benchmarks/device/wheels.txt

clean:
	rm -rf stguide-demo stguide-demo-quick .pytest_cache
