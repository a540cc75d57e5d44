# Quick start: `make demo` and `make test` on a machine with Python 3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fmtarray-installed
EXTRAS ?= test,docs,dask,zarr,xarray,cluster,scipy,plot,progress
# torch is an optional test oracle and benchmark baseline.  It is installed only
# when pip's local wheel directory holds the CPU build (an unpinned or remote
# torch would pull a multi-GB CUDA build); set WITH_TORCH=0 to skip it.
WITH_TORCH ?= auto
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint docs unit unit-no-numba bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@if [ "$(WITH_TORCH)" != "0" ]; then \
	  links=$$($(PY) -m pip config get global.find-links 2>/dev/null); \
	  if [ "$(WITH_TORCH)" = "1" ] || ls $$links/torch-*+cpu-*.whl >/dev/null 2>&1; then \
	    $(PY) -m pip install -q "$(TORCH_SPEC)" || echo "torch not installed: the torch oracle tests will be skipped"; \
	  else echo "no local CPU torch wheel: skipping the optional torch oracle (WITH_TORCH=1 forces it)"; fi; \
	fi
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_digits.py

lint: $(STAMP)
	$(VENV)/bin/ruff check fmtarray tests benchmarks examples

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

unit: $(STAMP)
	$(PY) -m pytest

# the convolution tests again with the compiled (Numba) kernels off: the BLAS/NumPy
# entries must serve every case on their own; and on our own thread pool only (no
# libgomp team), as where libgomp cannot be loaded
unit-no-numba: $(STAMP)
	FMTARRAY_NUMBA=0 FMTARRAY_POOL=python $(PY) -m pytest tests/test_conv.py tests/test_conv_layouts.py tests/test_numpy_algos.py tests/test_numba.py tests/test_numba_layouts.py tests/test_pool_kernels.py

test: lint docs unit unit-no-numba

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/overhead.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/elementwise.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/conv.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
