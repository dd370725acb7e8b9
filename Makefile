# Every target does its own set-up: a virtual environment in .venv, the package built and installed
# into it (with the extras the target needs), then the job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
JOBS ?= 2
ARGS ?=

.PHONY: all install test test-cpp test-asan test-tsan test-python demo bench clean

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

# C++ tests: plain, then under AddressSanitizer + UBSan, then ThreadSanitizer (build/cpp-<variant>).
define cpp_tests
	$(VENV)/bin/cmake -S . -B build/cpp$(1) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREPLAY_BUFFER_BUILD_TESTS=ON -DREPLAY_BUFFER_SANITIZE=$(2) > build/cmake$(1).log 2>&1 || (cat build/cmake$(1).log; exit 1)
	$(VENV)/bin/cmake --build build/cpp$(1) -j $(JOBS)
	cd build/cpp$(1) && $(VENV_ABS)/bin/ctest --output-on-failure
endef
VENV_ABS := $(abspath $(VENV))

test-cpp: $(VENV)/.build-tools
	mkdir -p build
	$(call cpp_tests,,)

test-asan: $(VENV)/.build-tools
	mkdir -p build
	$(call cpp_tests,-asan,address)

test-tsan: $(VENV)/.build-tools
	mkdir -p build
	$(call cpp_tests,-tsan,thread)

test-python: install
	$(VENV)/bin/pytest $(ARGS)

test: install test-cpp test-asan test-tsan test-python

demo: install
	$(PY) -m ray_replay demo $(ARGS)

bench: install
	$(PIP) install --quiet "cpprb>=10" "matplotlib>=3.7" || echo "optional baselines unavailable; benchmarking without them"
	$(PY) benchmarks/local.py $(ARGS)

clean:
	rm -rf build $(VENV)
