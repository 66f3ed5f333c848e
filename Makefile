# One command runs the main job, one runs every test; both create .venv when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ddcore-installed
PROFILE ?= cpu

.PHONY: install reproduce notebooks test lint test-lib test-notebooks lab bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)  ## run every notebook with the $(PROFILE) profile into results/$(PROFILE)/
	$(PY) -m ddcore.reproduce --profile $(PROFILE)

notebooks: $(STAMP)  ## re-execute the committed notebooks (their defaults) in place; figures into figures/
	$(PY) -m ddcore.reproduce --in-place

test: lint test-lib test-notebooks  ## lint, the library's tests, then nbval on every notebook

lint: $(STAMP)  ## ruff: lint and format check (config in pyproject.toml)
	$(VENV)/bin/ruff check ddcore tests bench
	$(VENV)/bin/ruff format --check ddcore tests bench

test-lib: $(STAMP)
	$(PY) -m pytest tests -q

test-notebooks: $(STAMP)
	$(PY) -m pytest -q --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks

lab: $(STAMP)  ## JupyterLab on notebooks/ with this environment as a kernel
	$(PY) -m ipykernel install --user --name ddcore --display-name "Python (ddcore .venv)"
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)  ## benchmarks, by hand (never in CI): every method against the matmul rate; see bench/run.py
	$(PY) bench/run.py

clean:
	rm -rf results .pytest_cache
