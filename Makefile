# Everything the project needs is installed from here; nothing by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench serve scan clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/switchboard

serve: $(STAMP)
	$(VENV)/bin/switchboard serve

scan: $(STAMP)
	$(VENV)/bin/switchboard scan

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
