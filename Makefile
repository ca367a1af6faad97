# chimera — every set-up step lives here, so `make demo` and `make test` work on a
# fresh machine. Re-running is fast: stamps skip what is current.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Use the active virtual environment, else create and use .venv.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chimera-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export MAX_JOBS ?= 2
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=
BENCH_THRESHOLD ?= 25%

EXT_SOURCES := $(shell sed -n 's/^[a-z]* *//p' csrc/sources.txt | grep -v '^\#') $(wildcard csrc/common/*.h csrc/cpu/*.h csrc/cpu/*.inc) csrc/sources.txt

.PHONY: help venv system-deps ext test test-ref demo bench bench-peers bench-compare cmake-check clean
help:
	@echo "make demo    set up, then separate the bundled example with the bundled model"
	@echo "make test    set up, then run the test suite (benchmark bodies once)"
	@echo "make bench   run the benchmarks and save them; make bench-compare checks for regressions"
	@echo "make cuda-check  build and load the CUDA extension without a GPU"

$(PY):
	python3 -m venv $(VENV)

# ffmpeg: `import museval` needs it (musdb -> stempeg checks at import time).
system-deps:
	@command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q ffmpeg; }

# torch only when none is importable: a CUDA torch already installed is kept.
$(STAMP): pyproject.toml setup.py | $(PY)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	@touch $@

venv: $(STAMP) system-deps

# Rebuild the extension in place when a C++/CUDA source changed (ninja: incremental).
chimera/.ext-stamp: $(EXT_SOURCES) $(STAMP)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

ext: venv chimera/.ext-stamp

test: ext
	CHIMERA_REQUIRE_EXT=$${CHIMERA_REQUIRE_EXT:-1} $(PY) -m pytest -q --benchmark-disable $(PYTEST_ARGS)

# The same suite on the pure-PyTorch references.
test-ref: ext
	CHIMERA_DISABLE_EXT=1 $(PY) -m pytest -q --benchmark-disable tests $(PYTEST_ARGS)

DEMO_INPUT := examples/demo-mixture.ogg
demo: ext
	$(PY) -m chimera info
	$(PY) -m chimera predict $(DEMO_INPUT) --out separated --force
	@echo "Separated $(DEMO_INPUT) with the bundled model: listen to separated/demo-mixture/vocals.wav and separated/demo-mixture/accompaniment.wav"

# Peers measured beside our kernels when installed (never dependencies): their loss
# modules are loaded by file path, so their own dependency stacks are not needed.
bench-peers: venv
	@$(PY) -c 'import importlib.util as u; exit(not (u.find_spec("asteroid") and u.find_spec("nussl")))' 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps asteroid==0.7.0 nussl==1.1.9

bench: ext bench-peers
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave $(PYTEST_ARGS)

# Compare with the last saved run; fail when a median regressed by more than BENCH_THRESHOLD.
bench-compare: ext
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=median:$(BENCH_THRESHOLD) $(PYTEST_ARGS)

# The same sources built with CMake + find_package(Torch), for C++ tooling.
cmake-check: venv
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" -DPython3_EXECUTABLE=$(PY) >/dev/null
	cmake --build build/cmake -j $(MAX_JOBS)

clean:
	rm -rf build chimera/_C*.so chimera/.ext-stamp

-include mk/*.mk
