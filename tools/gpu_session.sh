#!/usr/bin/env bash
# Every check that needs a GPU, in one call of a lent GPU machine (the device tool), where
# nothing can be downloaded and the image has torch, pytest and pytest-benchmark but not
# soundfile, soxr or expecttest:
#
#   make gpu-wheels                                   # here: the missing wheels into .whl/
#   run(command="bash tools/gpu_session.sh", carry=[".whl"], timeout_s=560)
#
# Steps, each with its own time limit, each log under $OUT (what comes back; at most 8 files):
#   env.txt        nvidia-smi, torch and CUDA versions
#   build.log      the extension built in place against that machine's torch, for its GPU
#   test-cuda.log  every CUDA test against the float64 references (pytest -m cuda tests:
#                  kernels, gradcheck, opcheck, models, AMP training, NCCL DDP on >= 2 GPUs)
#   bench.log      the CUDA benchmarks (pytest -m cuda benchmarks): kernels against their
#                  bytes-moved floors, and training steps per second by model width and batch
#                  (float32 and bf16), to plan a GPU training
#   bench.json     pytest-benchmark's figures, for benchmarks/RESULTS.md
#   summary.txt    one line per step: its exit status and seconds
# A test or benchmark step that fails or runs out of time does not stop the next one (a
# failed build ends the script: nothing else can run); the limits add up to 540 s, inside
# one call's 600.
set -u
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

step() {  # step NAME LIMIT_S LOG COMMAND...: run, log, and record the status and time
    local name=$1 limit=$2 log=$3; shift 3
    local t0=$SECONDS
    timeout --signal=KILL "$limit" "$@" >>"$OUT/$log" 2>&1
    local rc=$?
    echo "$name: rc $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    return $rc
}

if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'; } >"$OUT/env.txt" 2>&1

# Only this GPU's architecture: a third of the compile time of CUDA_ARCH_LIST's two.
arch=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || echo 9.0)
step build 200 build.log env CHIMERA_CUDA=1 CHIMERA_REQUIRE_EXT=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
    $PY setup.py -q build_ext --inplace || { echo "build failed: see build.log" | tee -a "$OUT/summary.txt"; exit 1; }
step test-cuda 180 test-cuda.log env CHIMERA_REQUIRE_EXT=1 $PY -m pytest -m cuda tests -q -p no:cacheprovider -rs
step bench 160 bench.log env CHIMERA_REQUIRE_EXT=1 $PY -m pytest -m cuda benchmarks -q -s -p no:cacheprovider \
    --benchmark-json="$OUT/bench.json"
cat "$OUT/summary.txt"
