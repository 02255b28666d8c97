# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README).
# Both are idempotent: the virtualenv is built once and rebuilt only when pyproject.toml changes.
VENV       ?= .venv
VENV_FLAGS ?=              # e.g. --system-site-packages on a GPU runner whose CUDA torch must be kept
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.parity-installed
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: two one-thread workers halve the suite on a 2-core box (12.5 -> 7.6 min,
# measured on a clean clone); `make test WORKERS=0` runs it in one process.
WORKERS ?= 2

# Tiny-model tests are pinned to one thread: on a shared 2-core box two threads can be 10-70x slower,
# and the thread count changes low-order float bits (see shared/reference/cpu-stack-notes.md).
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS ?= 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

DEMO_STAMP := demo/.built

.PHONY: demo test test-nightly test-quick quick mutation install bench clean

install: $(STAMP)

# The demo data (tiny model + AI Toolkit job) that cases/demo-*.yaml point at; `pytest parity` runs those cases.
$(DEMO_STAMP): $(STAMP) parity/demo.py
	$(VENV)/bin/parity demo --prepare
	@touch $(DEMO_STAMP)

$(STAMP): pyproject.toml .ci/install-torch
	@test -x $(PY) || python3 -m venv $(VENV_FLAGS) $(VENV)
	@sh .ci/install-torch $(PY)
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/parity demo

# Tests marked nightly (the parameter-recovery cases beyond the two quick ones, 12-18 s each) are left out: the suite
# reached its 10-minute budget on a 2-core box (10 m 03 s on a clean clone). `make test-nightly` runs them.
test: $(STAMP) $(DEMO_STAMP)
	$(PY) -m pytest -q -n $(WORKERS) -m "not nightly" $(PYTEST_ARGS)

test-nightly: $(STAMP) $(DEMO_STAMP)
	$(PY) -m pytest -q -n $(WORKERS) -m nightly $(PYTEST_ARGS)

# The quick local run: leaves out the tests marked slow (they start other Python processes).
test-quick: $(STAMP) $(DEMO_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Under a minute: the numerics details at tensor level, and one golden render of AI Toolkit's own previews per
# precision and family member (fp32, bf16, fp8, reference images, [klein]) in ONE parity process that enters
# portable CPU numerics by itself (PARITY_CPU_NUMERICS=portable in a clean environment; nothing pinned here).
quick: $(STAMP)
	$(PY) -m pytest -q -m quick $(PYTEST_ARGS)

# Does the suite notice a changed numerics detail or job rule? (benchmarks/mutation.py; ~1-2 min per mutation)
mutation: $(STAMP)
	$(PY) benchmarks/mutation.py

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) reports/* .parity-cache demo
