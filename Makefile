# chimera — every set-up step lives here, so `make demo` and `make test` work on a
# fresh machine. Re-running is fast: stamps skip what is current. `make help` lists the
# targets from the `## ...` comment on each target's line (here and in mk/*.mk).
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
# The torch .venv gets when none is importable (one already there, a CUDA build say, is
# kept): the release `make test` and `make demo` run on, its CPU wheel where the index has
# one. The other two torch versions have one home each: the floor any install accepts in
# pyproject.toml (the oldest torch with the torch.library API chimera.ops uses), and the
# CUDA build `make cuda-check` compiles against in mk/cuda.mk (a newer release, so each CI
# run builds the sources against two).
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=
BENCH_THRESHOLD ?= 25%
# The build requirements, read from pyproject.toml: --no-build-isolation builds with what is installed
# (and ninja, which the backend adds: pip builds the editable install before the [dev] extra's).
BUILD_REQUIRES := $(shell sed -n 's/^requires = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')

# What the extension is built from: every file of csrc/ (sources, headers, sources.txt) and the
# torch it is compiled against (reinstalled: a new version.py). setup.py lists the same as the
# extension's depends (without ninja, build_ext would otherwise skip the build).
EXT_SOURCES := $(shell find csrc -type f) $(wildcard $(VENV)/lib/python3*/site-packages/torch/version.py)
# True when chimera._C is importable: a build that failed and fell back (setup.py, no
# compiler) leaves the stamp stale, so that the next make tries again.
EXT_BUILT = $(PY) -c 'import importlib.util as u, sys; sys.exit(u.find_spec("chimera._C") is None)'

.PHONY: help venv system-deps test-deps ext test test-ref demo bench bench-peers bench-compare cmake-check \
	install-check clean

help: ## list the targets with what each does
	@awk -F ':.*## ' '/^[a-zA-Z0-9_-]+:.*## / {name[++n] = $$1; text[n] = $$2; if (length($$1) > w) w = length($$1)} \
	  END {for (i = 1; i <= n; i++) printf "  make %-" w "s  %s\n", name[i], text[i]}' $(MAKEFILE_LIST)

$(PY):
	python3 -m venv $(VENV)

system-deps: ## system packages the suite needs (ffmpeg: `import museval` requires it)
	@command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q ffmpeg; }

# torch only when none is importable: a CUDA torch already installed is kept. This tree
# installed under its former distribution name ("chimera") is uninstalled first. The
# editable install builds the extension in place, so chimera/.ext-stamp is current after it
# (when it was built: see EXT_BUILT).
$(STAMP): pyproject.toml setup.py build_backend/chimera_build.py | $(PY)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	@if $(PY) -m pip show chimera 2>/dev/null | grep -qx "Editable project location: $(CURDIR)"; then \
	  $(PY) -m pip uninstall -q -y chimera; fi
	$(PY) -m pip install -q $(foreach r,$(BUILD_REQUIRES),'$(r)') ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	@touch $@ && if $(EXT_BUILT); then touch chimera/.ext-stamp; else rm -f chimera/.ext-stamp; fi

venv: $(STAMP) system-deps ## create .venv (or use the active one) with torch and chimera installed for development

# Rebuild the extension in place when a C++/CUDA source changed (ninja: incremental).
chimera/.ext-stamp: $(EXT_SOURCES) $(STAMP)
	$(PY) setup.py -q build_ext --inplace
	@if $(EXT_BUILT); then touch $@; fi

ext: venv chimera/.ext-stamp ## build the extension in place (again only when a source changed)

# museval, PyYAML, tensorboard come with the [dev] extra (venv); the synthetic-data test
# needs the demo data's Debian packages. Installed here so that no test skips in CI for a
# missing package: .ci/check-skips fails the run on a skip it does not expect.
test-deps: venv demo-data-debs ## everything the tests need, optional packages included

test: ext test-deps ## set up, then run the test suite (benchmark bodies run once)
	CHIMERA_REQUIRE_EXT=$${CHIMERA_REQUIRE_EXT:-1} $(PY) -m pytest -q --benchmark-disable $(PYTEST_ARGS)

test-ref: ext test-deps ## the same suite on the pure-PyTorch references
	CHIMERA_REQUIRE_EXT=0 CHIMERA_DISABLE_EXT=1 $(PY) -m pytest -q --benchmark-disable tests $(PYTEST_ARGS)

DEMO_INPUT := examples/demo-mixture.ogg
demo: ext ## set up, then separate the bundled example with the bundled model
	$(PY) -m chimera info
	$(PY) -m chimera predict $(DEMO_INPUT) --out separated --force
	@echo "Separated $(DEMO_INPUT) with the bundled model: listen to separated/demo-mixture/vocals.wav and separated/demo-mixture/accompaniment.wav"

# Peers measured beside our kernels when installed (never dependencies): their loss
# modules are loaded by file path, so their own dependency stacks are not needed.
bench-peers: venv ## install asteroid and nussl (without their dependencies) for the benchmarks
	@$(PY) -c 'import importlib.util as u; exit(not (u.find_spec("asteroid") and u.find_spec("nussl")))' 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps asteroid==0.7.0 nussl==1.1.9

bench: ext bench-peers ## run the benchmarks and save the run (.benchmarks/)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave $(PYTEST_ARGS)

bench-compare: ext ## compare with the last saved run; fail when a median regressed by more than BENCH_THRESHOLD
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=median:$(BENCH_THRESHOLD) $(PYTEST_ARGS)

cmake-check: venv ## build the same sources with CMake + find_package(Torch), for C++ tooling
	@command -v cmake >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q cmake; }
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" -DPython3_EXECUTABLE=$(PY) >/dev/null
	cmake --build build/cmake -j $(MAX_JOBS)

install-check: venv ## install chimera as users do (pip install ., pip wheel ., sdist, uv) into fresh venvs, and check each
	.ci/install-check $(PY) "$(TORCH_CPU)"

clean: ## remove build outputs (the venvs stay)
	rm -rf build chimera/_C*.so chimera/.ext-stamp

-include mk/*.mk
