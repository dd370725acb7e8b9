# Every target does its own set-up: a virtual environment in .venv, the package built and installed
# into it (with the extras the target needs), then the job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
JOBS ?= 2
ARGS ?=

.PHONY: all install lint docs test test-cpp test-asan test-tsan test-nocodec test-python test-under-load demo bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The build tools of pyproject's [build-system] go into the venv, so the package builds without
# isolation and reuses build/ between runs (an incremental rebuild takes seconds).
$(VENV)/.build-tools: pyproject.toml $(VENV)/.system-deps | $(PY)
	$(PIP) install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	touch $@

# System C libraries the build links (per-field compression: LZ4 and Zstandard). Installed with apt
# (Debian/Ubuntu, as root) when their headers are missing; elsewhere install liblz4/libzstd development
# packages yourself (yum: lz4-devel libzstd-devel), or build with -DREPLAY_BUFFER_WITH_COMPRESSION=OFF.
SYSTEM_HEADERS := /usr/include/lz4.h /usr/include/zstd.h
$(VENV)/.system-deps: | $(PY)
	@missing=""; for header in $(SYSTEM_HEADERS); do [ -f $$header ] || missing="$$missing $$header"; done; \
	if [ -n "$$missing" ]; then \
		echo "missing$$missing: installing liblz4-dev libzstd-dev"; \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
			$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq liblz4-dev libzstd-dev || exit 1; \
		else echo "no apt-get here: install the LZ4 and Zstandard development packages (e.g. yum install lz4-devel libzstd-devel)"; exit 1; fi; \
	fi
	touch $@

install: $(VENV)/.build-tools
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PIP) install --quiet --no-build-isolation ".[test,rllib,docs]"

# C++ tests: plain, then under AddressSanitizer + UBSan, then ThreadSanitizer (build/cpp-<variant>).
VENV_ABS := $(abspath $(VENV))
define cpp_tests
	mkdir -p build
	$(VENV)/bin/cmake -S . -B build/cpp$(1) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREPLAY_BUFFER_BUILD_TESTS=ON -DREPLAY_BUFFER_SANITIZE=$(2) $(3) > build/cmake$(1).log 2>&1 || (cat build/cmake$(1).log; exit 1)
	$(VENV)/bin/cmake --build build/cpp$(1) -j $(JOBS)
	cd build/cpp$(1) && $(VENV_ABS)/bin/ctest --output-on-failure
endef

test-cpp: $(VENV)/.build-tools
	$(call cpp_tests,,,)

# The ASan variant also builds the extension with ASan + UBSan and runs the local-buffer tests on it
# (ASan's runtime must be loaded first, and libstdc++ before it intercepts a throw, hence LD_PRELOAD;
# CPython's own allocations are not leaks).
# The split: this step tests the native code, not Ray. Tests that start Ray (marked "ray" by
# tests/conftest.py: every test using the ray_local / ray_stopped fixtures, directly or not) are left
# out here with -m "not ray" and run in test-python, without the preload; RAY_REPLAY_TESTS_NO_RAY
# makes conftest refuse, with a message, any Ray start that slips through, so no Ray process (GCS,
# raylet, worker) ever starts under the ASan runtime.
ASAN_TESTS := tests/test_compression.py tests/test_dedup_compression.py tests/test_buffer.py tests/test_bad_input.py tests/test_prioritized.py tests/test_lockfree.py tests/test_persistence.py tests/test_model.py tests/test_dedup.py tests/test_storage.py tests/test_sampling.py tests/test_sharding.py tests/test_coordinator_impl.py tests/test_nested.py tests/test_sequences.py
test-asan: install
	$(call cpp_tests,-asan,address,-DREPLAY_BUFFER_BUILD_PYTHON_MODULE=ON -DPython_EXECUTABLE=$(VENV_ABS)/bin/python -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir))
	rm -rf build/asan-package && mkdir -p build/asan-package && cp -r ray_replay build/asan-package/
	cp build/cpp-asan/_core*.so build/asan-package/ray_replay/
	PYTHONPATH=build/asan-package RAY_REPLAY_TESTS_NO_RAY=1 LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 \
		$(VENV)/bin/pytest -p no:cacheprovider -q -m "not ray" $(ASAN_TESTS)

# A build without codecs (-DREPLAY_BUFFER_WITH_COMPRESSION=OFF, for machines without liblz4/libzstd):
# the C++ tests that need no codec, then the extension built the same way and the local-buffer tests
# that use no codec, plus tests/test_codecs_build.py, which checks that every codec is refused naming
# the build option (RAY_REPLAY_EXPECT_CODECS=0).
NOCODEC_TESTS := tests/test_codecs_build.py tests/test_buffer.py tests/test_bad_input.py tests/test_prioritized.py tests/test_dedup.py tests/test_sampling.py tests/test_sequences.py tests/test_lockfree.py
test-nocodec: install
	$(call cpp_tests,-nocodec,,-DREPLAY_BUFFER_WITH_COMPRESSION=OFF -DREPLAY_BUFFER_BUILD_PYTHON_MODULE=ON -DPython_EXECUTABLE=$(VENV_ABS)/bin/python -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir))
	rm -rf build/nocodec-package && mkdir -p build/nocodec-package && cp -r ray_replay build/nocodec-package/
	cp build/cpp-nocodec/_core*.so build/nocodec-package/ray_replay/
	PYTHONPATH=build/nocodec-package RAY_REPLAY_EXPECT_CODECS=0 RAY_REPLAY_TESTS_NO_RAY=1 $(VENV)/bin/pytest -p no:cacheprovider -q -m "not ray" $(NOCODEC_TESTS)

test-tsan: $(VENV)/.build-tools
	$(call cpp_tests,-tsan,thread,)

# All Python tests, the "ray" ones included (the ASan step leaves those out), on the installed package.
# Tests that start a Ray of their own (a multi-node Cluster; a Ray with a metrics port; the docs'
# examples, a Ray per page that uses one, in a subprocess) run in pytest processes of their own, so
# each pytest process starts one Ray and no process restarts Ray while another session's background
# threads are alive: that can crash the interpreter at exit
# (ray-project/ray#31145; seen once here, after every test had passed; conftest also shuts Ray down
# when the session finishes). PYTHONFAULTHANDLER makes any such crash print where it happened.
# Ray's startup deadlines are widened for a busy machine in tests/conftest.py.
OWN_RAY_TESTS := tests/test_distributed_cluster.py tests/test_monitoring.py tests/test_docs.py
test-python: install
	PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest $(ARGS) $(addprefix --ignore=,$(OWN_RAY_TESTS))
	for module in $(OWN_RAY_TESTS); do PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest $(ARGS) $$module || exit 1; done

# Chaos scenarios (issue 18, tests/chaos): network partitions, a slow lossy node, a coordinator cut
# from half of its shards, a checkpoint disk that fills up or turns read-only, on a Ray cluster of
# network namespaces that the tests build and remove (tests/chaos/netbed.py). Needs root (namespaces,
# mounts) and iproute2, nftables, ethtool; says so and fails where namespaces cannot be made. A
# pytest process of its own; not part of `make test` (tests/conftest.py leaves tests/chaos out unless
# RAY_REPLAY_CHAOS is set): about 5 minutes here. -s prints each scenario's measurements.
# The chaos bed's system tools (iproute2, nftables, ethtool), installed with apt (Debian/Ubuntu, as
# root) when missing, as the compression libraries are above; elsewhere install them yourself. The
# check after it still fails clearly where namespaces cannot be made (no root, no CAP_NET_ADMIN).
CHAOS_TOOLS := ip nft ethtool ss mount
.PHONY: chaos-deps
chaos-deps:
	@missing=""; for tool in $(CHAOS_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "missing$$missing: installing iproute2 nftables ethtool mount"; \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables ethtool mount || \
		 (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables ethtool mount)) >/dev/null || exit 1; \
	fi

.PHONY: test-chaos
test-chaos: install chaos-deps
	@$(PY) -c "import sys; sys.path.insert(0, 'tests/chaos'); from netbed import can_make_namespaces; why = can_make_namespaces(); why and sys.exit('test-chaos: cannot build the test bed here: ' + why)"
	RAY_REPLAY_CHAOS=1 PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest -s $(ARGS) tests/chaos

# Static checks, first in `make test`: ruff ([tool.ruff] in pyproject: pycodestyle, pyflakes, isort,
# pyupgrade, bugbear) over the package, tests, benchmarks and examples; mypy --strict over ray_replay
# ([tool.mypy]: the sources, the _core.pyi stub included); stubtest of the installed ray_replay._core
# against the installed _core.pyi, run from inside the venv so that the built package is imported, not
# the checkout (pybind11 signatures are not introspectable: it checks names, kinds and classes;
# tests/stubtest-allowlist.txt holds the accepted differences, each with its reason). ruff and mypy come
# with the test extra (pinned there, and here for a venv that lacks them). About 45 s with the package
# already installed, most of it stubtest (it reads numpy's stubs afresh each run).
LINT_TOOLS := "ruff==0.17.6" "mypy==2.4.1"
lint: install
	[ -x $(VENV)/bin/ruff ] && [ -x $(VENV)/bin/mypy ] || $(PIP) install --quiet $(LINT_TOOLS)
	$(VENV)/bin/ruff check ray_replay tests benchmarks examples
	$(VENV)/bin/mypy
	cd $(VENV) && bin/python -m mypy.stubtest ray_replay._core --allowlist $(abspath tests/stubtest-allowlist.txt)

# The documentation site (docs/mkdocs.yml: MkDocs, Material, mkdocstrings; the docs extra, installed by
# `install`) built into build/docs with warnings as errors: a broken link, a missing anchor, a nav entry
# to a missing page or a docstring mkdocstrings cannot parse fails it (not --quiet: it hides the warnings
# from --strict). The API reference reads the package's sources and ray_replay/_core.pyi from the
# checkout (nothing is imported). A few seconds. The pages' examples run in tests/test_docs.py.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -f docs/mkdocs.yml
	@echo "docs: built build/docs/index.html"

test: lint install docs test-cpp test-asan test-tsan test-nocodec test-python test-wheel

# `make test` (RUNS times in a row, default 1) while one busy loop per core (HOGS, default all of
# them) keeps the machine loaded; stops at the first failing run. The loops' pids are recorded and
# exactly those are stopped when the recipe ends, whether the runs pass, fail or are interrupted.
# Each run's duration and the total are reported.
RUNS ?= 1
HOGS ?= $(shell nproc 2>/dev/null || echo 2)
test-under-load:
	@pids=""; status=0; \
	stop_hogs() { for pid in $$pids; do kill $$pid 2>/dev/null; done; for pid in $$pids; do wait $$pid 2>/dev/null; done; [ -z "$$pids" ] || echo "test-under-load: stopped the CPU hogs (pids$$pids)"; }; \
	trap 'stop_hogs' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	for i in $$(seq 1 $(HOGS)); do $(PYTHON) -c 'while True: pass' & pids="$$pids $$!"; done; \
	echo "test-under-load: $(HOGS) CPU hogs running (pids$$pids); make test, $(RUNS) run(s)"; \
	begin=$$(date +%s); \
	for run in $$(seq 1 $(RUNS)); do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory test || status=$$?; \
		took=$$(( $$(date +%s) - start )); \
		alive=0; for pid in $$pids; do kill -0 $$pid 2>/dev/null && alive=$$((alive + 1)); done; \
		if [ $$status -ne 0 ]; then echo "test-under-load: run $$run of $(RUNS) FAILED (status $$status) after $$((took / 60)) min $$((took % 60)) s"; exit $$status; fi; \
		echo "test-under-load: run $$run of $(RUNS) passed in $$((took / 60)) min $$((took % 60)) s ($$alive of $(HOGS) hogs still running)"; \
	done; \
	total=$$(( $$(date +%s) - begin )); \
	echo "test-under-load: all $(RUNS) run(s) passed in $$((total / 60)) min $$((total % 60)) s"

demo: install
	$(VENV)/bin/ray-replay demo $(ARGS)

bench: install
	$(PIP) install --quiet "cpprb>=10" "matplotlib>=3.7" || echo "optional baselines unavailable; benchmarking without them"
	$(PIP) install --quiet "torchrl==0.14.1" "tensordict==0.14.3" "torch==2.13.0" || echo "torchrl unavailable; benchmarking without it"
	$(VENV)/bin/ray-replay bench $(ARGS)

clean:
	rm -rf build $(VENV)

# Wheels. `make wheel`: a wheel of this checkout in dist/ (built without isolation by the venv's build
# tools, reusing build/<wheel tag>, so after `make install` it takes seconds). It is a plain
# linux_x86_64 wheel for this machine; the distributed manylinux wheels (x86_64, aarch64, CPython
# 3.10-3.13) are built by cibuildwheel in CI from [tool.cibuildwheel] in pyproject.toml, which needs
# docker and the manylinux images and so does not run here.
# `make test-wheel`: that wheel installed with its dependencies into a fresh venv (build/wheel-venv, on
# the .venv's Python) and the smoke tests (tests/smoke, no Ray started) run against it from outside
# the source tree, as cibuildwheel's test step does.
.PHONY: wheel test-wheel test-pythons
WHEEL_VENV := build/wheel-venv
wheel: $(VENV)/.build-tools
	rm -f dist/ray_replay-*.whl
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PIP) wheel --quiet --no-deps --no-build-isolation -w dist/ .
	@ls dist/ray_replay-*.whl

test-wheel: wheel
	rm -rf $(WHEEL_VENV)
	$(PY) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check dist/ray_replay-*.whl "pytest>=7"
	cd $(WHEEL_VENV) && RAY_REPLAY_SMOKE_SITE=$(abspath $(WHEEL_VENV)) bin/pytest -q -p no:cacheprovider $(abspath tests/smoke)

# The smoke tests and the local-buffer suite (no Ray started: -m "not ray") on other Pythons, each from
# scratch: a clean venv in build/py<version>, the build tools, a wheel built in build/py<version>/build
# and installed, numpy, pytest, scipy, hypothesis and plain Ray (test_dedup.py imports
# ray_replay.distributed; no Ray process starts; the [default] extras and the RLlib and atheris test
# dependencies are left out). Pythons are found in pyenv's versions or on PATH as python<version>; one
# not found is reported and skipped. The full Ray and RLlib suites run on the .venv's Python (make test).
TEST_PYTHON_VERSIONS ?= 3.10 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
LOCAL_TESTS := tests/test_compression.py tests/test_dedup_compression.py tests/test_buffer.py tests/test_bad_input.py tests/test_prioritized.py tests/test_lockfree.py tests/test_persistence.py tests/test_model.py tests/test_dedup.py tests/test_storage.py tests/test_sampling.py tests/test_nested.py
test-pythons: $(VENV)/.system-deps
	@for version in $(TEST_PYTHON_VERSIONS); do \
		python=$$(ls -d $(PYENV_ROOT)/versions/$$version.*/bin/python$$version 2>/dev/null | sort -V | tail -n 1); \
		[ -n "$$python" ] || python=$$(command -v python$$version || true); \
		if [ -z "$$python" ]; then echo "test-pythons: no Python $$version here; skipped"; continue; fi; \
		venv=build/py$$version; start=$$(date +%s); \
		echo "test-pythons: Python $$version ($$python) in $$venv"; \
		rm -rf $$venv && $$python -m venv $$venv || exit 1; \
		$$venv/bin/python -m pip install --quiet --disable-pip-version-check "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja numpy "pytest>=7" "scipy>=1.10" "hypothesis>=6" "ray>=2.9" || exit 1; \
		CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $$venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps --config-settings=build-dir=$$venv/build -w $$venv/dist . || exit 1; \
		$$venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $$venv/dist/ray_replay-*.whl || exit 1; \
		(cd $$venv && RAY_REPLAY_SMOKE_SITE=$(CURDIR)/$$venv bin/pytest -q -p no:cacheprovider -m "not ray" $(CURDIR)/tests/smoke $(addprefix $(CURDIR)/,$(LOCAL_TESTS))) || exit 1; \
		echo "test-pythons: Python $$version passed in $$(( $$(date +%s) - start )) s"; \
	done
