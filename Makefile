# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
# Each installs what it needs first: Debian packages for the DICOM peers, a .venv with the
# project and its dev extras, and the CPU build of torch (pinned in pyproject.toml).

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
APT_PKGS := dcmtk dicom3tools orthanc
export TCP_NODELAY := 1

.PHONY: all deps apt venv demo test lint typecheck bench models models-deep clean

all: test

deps: apt venv

# Debian's DCMTK (the scanner), Orthanc (the PACS) and dicom3tools (dciodvfy, the validator).
apt:
	@if ! command -v storescu >/dev/null || ! command -v dciodvfy >/dev/null \
	    || ! command -v Orthanc >/dev/null; then \
	  echo "installing $(APT_PKGS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(APT_PKGS); \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check dicomnode harmonizers evaluation tests bench

typecheck: venv
	$(VENV)/bin/mypy

test: deps lint typecheck
	$(VENV)/bin/pytest -q tests

demo: deps
	$(PY) -m dicomnode.demo

bench: deps
	$(PY) -m bench

# Re-fit the shipped models from simulated training cohorts (see harmonizers/README.md):
# `models` takes under a minute; `models-deep` trains the CNNs, about 20 minutes on one core.
models: deps
	$(PY) -m harmonizers.make_models
	$(PY) -m harmonizers.make_models --method physics

models-deep: deps
	$(PY) -m harmonizers.make_models --method cyclegan
	$(PY) -m harmonizers.make_models --method stylemapper

clean:
	rm -rf var bench/out .pytest_cache .mypy_cache .ruff_cache
