# edge-moa: `make demo` and `make test` work on a fresh machine (Debian/Ubuntu; root installs system packages).
VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
OPTIMUM_VENV ?= .venv-optimum
# mosquitto for every test; openssl, iproute2, iptables, systemd (systemd-analyze) and util-linux (unshare)
# for provisioning and the emulated fleet in network namespaces; chromium and its driver for the mesh page's
# browser test; curl for the gateway's.
APT_PKGS  := mosquitto mosquitto-clients openssl iproute2 iptables systemd util-linux chromium chromium-driver curl
APT_CMDS  := mosquitto mosquitto_pub openssl ip iptables systemd-analyze unshare chromium chromedriver curl
PYTEST_ARGS ?=

.PHONY: demo test chaos install install-export install-optimum system-deps default-model test-models lint clean help

help:
	@echo "make demo   - local broker + 4 agents with the default model, sample prompts answered"
	@echo "make test   - install everything needed, then run the whole test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# The model-export tools (torch, transformers, ...) are a workstation step, never needed on a board.
# torch first, pinned: 2.13.0 is the CPU build (an unpinned torch pulls a multi-GB CUDA build).
$(VENV)/.installed-export: pyproject.toml | $(STAMP)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,export]'
	touch $@

install-export: $(VENV)/.installed-export

# `model build --exporter optimum` (the exporter of last resort): optimum-onnx needs transformers < 4.58 and the
# export extra transformers 5, so it gets a venv of its own. The build finds it there and runs only its export step
# in it (edge_agent/model/optimum.py). torch as above: the CPU build.
$(OPTIMUM_VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/pip install -q --upgrade pip
	$(OPTIMUM_VENV)/bin/pip install -q torch==2.13.0
	$(OPTIMUM_VENV)/bin/pip install -q -e '.[optimum]'
	touch $@

install-optimum: $(OPTIMUM_VENV)/.installed

system-deps:
	@missing=""; \
	for cmd in $(APT_CMDS); do \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -x /sbin/$$cmd ] || missing=yes; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(APT_PKGS) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	  else \
	    echo "error: system packages missing. Run: sudo apt-get install -y $(APT_PKGS)   (or run make as root)"; \
	    exit 1; \
	  fi; \
	fi

# Built once, cached in ~/.cache/edge-moa/models (EDGE_MOA_MODEL_DIR); `model build` skips a verified build.
default-model: install-export
	$(BIN)/edge-moa model build smollm2-135m-instruct

demo: install system-deps default-model
	$(BIN)/edge-moa demo

# What the slow model tests use besides the tiny model the suite builds itself: the fp32 reference (quality, KL),
# the Gemma 3 270M entry and the Qwen2.5-Coder-0.5B and 1.5B chat models (mixed meshes, `select`; the 1.5B build
# peaks at 17 GB of RAM for 4 min). Each is built once and cached.
test-models: default-model
	$(BIN)/edge-moa model build smollm2-135m-instruct --precision fp32 --name smollm2-135m-instruct-fp32
	$(BIN)/edge-moa model build gemma3-270m
	$(BIN)/edge-moa model build qwen2.5-coder-0.5b-instruct
	$(BIN)/edge-moa model build qwen2.5-coder-1.5b-instruct

test: install-export install-optimum system-deps test-models
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The chaos scenarios of tests/chaos, longer (minutes, thousands of prompts): one line each, then a JSON summary.
chaos: install system-deps
	$(BIN)/python tools/bench/chaos.py $(CHAOS_ARGS)

lint: install
	$(BIN)/ruff check edge_agent tests tools

clean:
	rm -rf $(VENV) $(OPTIMUM_VENV) .pytest_cache build *.egg-info
