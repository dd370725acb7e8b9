# Every target does its own set-up: a virtual environment in .venv, the package built and installed
# into it (with the extras the target needs), then the job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
JOBS ?= 2
ARGS ?=

.PHONY: all install test test-cpp test-python demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The build tools of pyproject's [build-system] go into the venv, so the package builds without
# isolation and reuses build/ between runs (an incremental rebuild takes seconds).
$(VENV)/.build-tools: pyproject.toml | $(PY)
	$(PIP) install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	touch $@

install: $(VENV)/.build-tools
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PIP) install --quiet --no-build-isolation ".[test]"

test-cpp: | $(PY)
	$(VENV)/bin/cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREPLAY_BUFFER_BUILD_TESTS=ON > build-cpp.log 2>&1 || (cat build-cpp.log; exit 1)
	$(VENV)/bin/cmake --build build/cpp -j $(JOBS)
	cd build/cpp && ctest --output-on-failure

test-python: install
	$(VENV)/bin/pytest $(ARGS)

test: install test-cpp test-python

demo: install
	$(PY) -m ray_replay demo $(ARGS)

bench: install
	$(PIP) install --quiet "cpprb>=10" "matplotlib>=3.7" || echo "optional baselines unavailable; benchmarking without them"
	$(PY) benchmarks/local.py $(ARGS)

clean:
	rm -rf build $(VENV) build-cpp.log
