# Regression gate on speed-ups (issue 15). Included by the main Makefile ($(PY), ext).
#   make bench-check                      # the benchmarks that have a floor, default shapes
#   make bench-check CHIMERA_BENCH_FULL=1 # the full shapes and their floors
# Each gated benchmark times our kernel against its in-run baseline (benchutil.py) and stores
# the speed-up; benchmarks/check_floors.py fails when one is below its floor in
# benchmarks/floors.toml. Ours runs on the $(BENCH_ISA) path beside ATen on the same path,
# so an AVX2 figure is measured on any x86-64 machine.
BENCH_ISA ?= $(if $(filter x86_64,$(shell uname -m)),avx2,default)
BENCH_CHECK_JSON ?= build/bench-check.json

.PHONY: bench-check
bench-check: ext ## fail when a kernel's speed-up over its baseline falls below benchmarks/floors.toml
	@mkdir -p $(dir $(BENCH_CHECK_JSON))
	CHIMERA_CPU_CAPABILITY=$(BENCH_ISA) ATEN_CPU_CAPABILITY=$(BENCH_ISA) $(PY) -m pytest -q -p no:cacheprovider \
	    $$($(PY) benchmarks/check_floors.py --select) --benchmark-only --benchmark-json=$(BENCH_CHECK_JSON) $(PYTEST_ARGS)
	$(PY) benchmarks/check_floors.py $(BENCH_CHECK_JSON)
