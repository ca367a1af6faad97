# aarch64 build check (issue 15). Included by the main Makefile ($(PY), $(SUDO), venv).
#   make arm-check
# Compiles the CPU half of the extension (the cpp entries of csrc/sources.txt) for aarch64 with
# Debian's cross compiler against the installed torch headers, to objects that are thrown
# away (-c, -O2: inlining and code generation run, so an x86-only attribute, builtin or
# intrinsic outside a guarded path fails here; warnings are errors). Nothing is linked:
# the torch libraries installed here are x86-64.
ARM_CXX ?= aarch64-linux-gnu-g++
ARM_SOURCES := $(shell sed -n 's/^cpp  *//p' csrc/sources.txt)
ARM_FLAGS ?= -std=c++20 -O2 -Wall -Werror -fPIC -fvisibility=hidden -fopenmp -DCHIMERA_TORCH_VERSION='"arm-check"'

.PHONY: arm-check
arm-check: venv ## compile the CPU kernels for aarch64 (cross compiler, no linking)
	@command -v $(ARM_CXX) >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q g++-aarch64-linux-gnu; }
	@includes="$$($(PY) -c 'import sysconfig; from torch.utils import cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths() + [sysconfig.get_paths()["include"]]))')"; \
	for src in $(ARM_SOURCES); do \
	  echo "arm-check: $(ARM_CXX) -c $$src"; \
	  $(ARM_CXX) $(ARM_FLAGS) -Icsrc $$includes -c $$src -o /dev/null || exit 1; \
	done; \
	echo "arm-check: $(words $(ARM_SOURCES)) sources compile for aarch64"
