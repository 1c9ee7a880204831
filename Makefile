# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-fast browser index eval bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, from this machine's CPU build; otherwise a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (Playwright cannot download its own browser here).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }
	@command -v chromium >/dev/null && echo "chromium: $$(command -v chromium)"

index: install
	$(VENV)/bin/rag ingest

run: index
	$(VENV)/bin/rag ui

# Two workers: the suite mixes CPU work with waiting on servers and timeouts (see README, Development).
test: install browser
	$(PY) -m pytest -q -ra -n 2 --dist worksteal --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser" -n 2

eval: index
	$(VENV)/bin/rag eval --dataset eval/datasets/dev.jsonl --answer extractive --out eval/reports/latest

bench: index
	$(VENV)/bin/rag bench

clean:
	rm -rf .rag
