# Two entry points for a newcomer: `make demo` and `make test`.
# Both create (or reuse) .venv and install the project pinned by constraints.txt.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.PHONY: demo test install clean gpu-wheels

install: $(STAMP)

# Re-install only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt setuptools wheel
	$(PY) -m pip install --quiet --no-build-isolation -c constraints.txt -e '.[test]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	bash scripts/demo.sh $(PY) $(DEMO_DIR)

# The wheels (and tokenizer files) a GPU session carries: benchmarks/gpu_wheels.sh, then
# OUT=dir WHEELS=.whl bash benchmarks/gpu_session.sh on the GPU machine.
gpu-wheels: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu_wheels.sh .whl

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
