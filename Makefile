# Two commands on a fresh clone: `make demo` (set up + main job) and `make test` (set up + fast suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow" -n 2 --nbmake tests notebooks

.PHONY: setup demo test test-all clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/slamjax run

# pytest exit code 5 means "no tests collected": that must fail, never pass silently.
test: setup
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV) .pytest_cache
