# Two entry points, both self-contained on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC pins the CPU wheel that lies on this project's machines; on your own machine
# override it (e.g. `make test TORCH_SPEC=torch`) to take the build that fits your hardware.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iscl-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,dicom,bm3d,dask,mrc,hdf5,nifti,export,tensorboard,napari-test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/iscl demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
