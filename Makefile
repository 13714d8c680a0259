# Two entry points: `make demo` (the main job on the local backend) and `make test`.
# Both build .venv from this repo's own files on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: test demo install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# No CUDA here: take the CPU build of torch first, or pip would pull a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/maspo demo

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/losses.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
