# The two commands of the README:
#   make serve   install into .venv and run `shmchannels serve` (the built-in demo)
#   make test    install into .venv (with test extras) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip

.PHONY: serve test install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

install: $(VENV)/bin/python
	$(PIP) install --quiet .

install-test: $(VENV)/bin/python
	$(PIP) install --quiet -e '.[test]'

serve: install
	$(VENV)/bin/shmchannels serve

test: install-test
	$(VENV)/bin/python -m pytest

bench: $(VENV)/bin/python
	$(PIP) install --quiet -e '.[test,bench]'
	$(VENV)/bin/python bench/layer.py
	$(VENV)/bin/python bench/asgi.py
	$(VENV)/bin/python bench/render.py

clean:
	rm -rf build dist *.egg-info $(VENV) .venv-* .cache shmchannels/*.so
