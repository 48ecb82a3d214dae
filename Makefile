# Two commands on a fresh clone: `make demo` (set up + main job) and `make test` (set up + fast suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow" -n 2 --nbmake tests notebooks
DOCS_OUT ?= docs/_build

.PHONY: setup demo test test-all docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/slamjax run

# pytest exit code 5 means "no tests collected": that must fail, never pass silently.
# The API reference is built too (≈ 5 s), with every pdoc warning an error.
test: setup
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi; \
	$(BIN)/python docs/build.py --out $(DOCS_OUT) || rc=1; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -n 2

# API reference from the docstrings (pdoc) into $(DOCS_OUT); warnings are errors.
docs: setup
	$(BIN)/python docs/build.py --out $(DOCS_OUT)

clean:
	rm -rf $(VENV) .pytest_cache $(DOCS_OUT)
