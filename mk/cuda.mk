# CUDA targets. Included by the main Makefile; also usable alone:
#   make -f mk/cuda.mk cuda-check
#
# cuda-check: without a GPU, build the CUDA half of the extension against a CUDA build
#   of torch in .venv-cuda (created when missing or stale) and check that it loads and
#   that every op has CPU and CUDA kernels. Our .cu files must compile without warnings
#   (CHIMERA_WERROR=1 turns nvcc warnings into errors). The build goes to
#   $(CUDA_BUILD_DIR) -- never in place -- so the CPU build of .venv is left alone, and
#   ninja there recompiles only what changed.
# test-cuda: on a machine with a GPU, build in place with the torch installed there and
#   run the CUDA tests and benchmarks.

CUDA_BASE_PYTHON ?= python3
VENV_CUDA ?= .venv-cuda
# The CUDA build of torch cuda-check compiles against: the newest release the CI machines
# reach, newer than .venv's (Makefile: TORCH_CPU), so each CI run builds the sources
# against two torch releases; any CUDA build of torch >= pyproject.toml's floor would do.
CUDA_TORCH ?= torch==2.14.1
CUDA_REQUIREMENTS ?= $(CUDA_TORCH) numpy pytest ninja soundfile soxr tqdm
CUDA_ARCH_LIST ?= 8.0;9.0
CUDA_BUILD_DIR ?= build/cuda-check
CUDA_MAX_JOBS ?= $(or $(MAX_JOBS),2)
CUDA_TEST_PYTHON ?= python3

# The stamp's name carries a hash of the requirements: change them and the venv is updated.
_CUDA_REQ_HASH := $(shell printf '%s' '$(CUDA_REQUIREMENTS)' | sha1sum | cut -c1-12)
_CUDA_STAMP := $(VENV_CUDA)/.stamp-chimera-$(_CUDA_REQ_HASH)
_CUDA_PY := $(abspath $(VENV_CUDA))/bin/python
_CUDA_LIB := $(abspath $(CUDA_BUILD_DIR))/lib

.PHONY: cuda-check cuda-venv cuda-build test-cuda

cuda-venv: $(_CUDA_STAMP) ## create .venv-cuda with the CUDA build of torch (no GPU needed)

# --no-cache-dir: the CUDA wheels (~5.5 GB of torch alone) would also be kept in pip's cache,
# doubling the disk this needs (a CI run once failed with "No space left on device").
$(_CUDA_STAMP):
	test -x $(VENV_CUDA)/bin/python || $(CUDA_BASE_PYTHON) -m venv $(VENV_CUDA)
	$(VENV_CUDA)/bin/python -m pip install -q --no-cache-dir $(CUDA_REQUIREMENTS)
	$(VENV_CUDA)/bin/python -c "import torch; assert torch.version.cuda, 'torch in $(VENV_CUDA) is not a CUDA build'"
	rm -f $(VENV_CUDA)/.stamp-chimera-*
	touch $@

# CHIMERA_REQUIRE_EXT=1: a failed build is an error here, not a fallback to the references.
# build_ext --force: ninja still recompiles only the objects whose sources or headers changed.
cuda-build: $(_CUDA_STAMP) ## compile the CUDA extension into build/cuda-check/ against .venv-cuda's torch
	mkdir -p $(CUDA_BUILD_DIR)
	PATH="$(abspath $(VENV_CUDA))/bin:$$PATH" CHIMERA_CUDA=1 CHIMERA_WERROR=1 CHIMERA_REQUIRE_EXT=1 \
	TORCH_CUDA_ARCH_LIST="$(CUDA_ARCH_LIST)" MAX_JOBS=$(CUDA_MAX_JOBS) \
	$(_CUDA_PY) setup.py -q egg_info --egg-base $(abspath $(CUDA_BUILD_DIR)) build_py --build-lib $(_CUDA_LIB) \
	    build_ext --force --build-lib $(_CUDA_LIB) --build-temp $(abspath $(CUDA_BUILD_DIR))/temp

# Runs outside the source tree (-P, cwd in the build dir, no pythonpath from pyproject.toml)
# so it imports the built copy.
cuda-check: cuda-build ## build the CUDA extension without a GPU and check it loads with every op on CPU and CUDA
	cd $(CUDA_BUILD_DIR) && CHIMERA_CUDA_CHECK_LIB=$(_CUDA_LIB) PYTHONPATH=$(_CUDA_LIB) TORCH_CUDA_ARCH_LIST="$(CUDA_ARCH_LIST)" \
	$(_CUDA_PY) -P -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR) -o pythonpath= \
	    $(CURDIR)/tests/cuda_check/test_cuda_build.py

test-cuda: ## on a GPU machine: build in place against the installed torch, run the CUDA tests and benchmarks
	CHIMERA_REQUIRE_EXT=1 $(CUDA_TEST_PYTHON) -m pip install --no-build-isolation -e .
	CHIMERA_REQUIRE_EXT=1 $(CUDA_TEST_PYTHON) -m pytest -m cuda tests $(wildcard benchmarks)

# gpu-wheels: the packages chimera needs that the lent GPU machines' image lacks (it has torch,
# numpy, tqdm, pytest, pytest-benchmark; nothing can be downloaded there), as wheels for its
# Python, into .whl/ (ignored by git), for tools/gpu_session.sh: run(..., carry=[".whl"]).
GPU_PYTHON_VERSION ?= 3.12
GPU_WHEELS ?= soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12 expecttest==0.3.0
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64

.PHONY: gpu-wheels
gpu-wheels: ## download the wheels tools/gpu_session.sh installs on a GPU machine into .whl/
	$(CUDA_BASE_PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	    --implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $(GPU_WHEELS)
