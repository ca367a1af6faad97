"""Training throughput (examples/s) of the `small` Chimera++ preset on the CPU: one optimiser step
(forward, Chimera++ objective α·DC-W + (1−α)·tPSA, backward, clipping, Adam) on a fixed batch.
On CUDA (`pytest -m cuda`): the same step at the bundled model's shape (batch x 2 s at 16 kHz)
for several widths and batch sizes, in float32 and bf16 autocast, to plan a GPU training.

Compared in the same run: with the extension (in this process) and with CHIMERA_DISABLE_EXT=1
(pure-PyTorch references, in a subprocess, timed the same way; the ratio goes to extra_info).

Default shape: batch 4 x 1 s at 8 kHz (n_fft 256, hop 64). Full (CHIMERA_BENCH_FULL=1): the
shape of recipes/demo.toml, batch 8 x 2 s at 16 kHz (n_fft 512, hop 128).

Both measurements use CHIMERA_BENCH_THREADS torch threads (default 1): on a shared CPU,
multi-threaded LSTM timings are dominated by contention (seen: 3-8x swings between runs).
"""
import json
import os
import subprocess
import sys
import time

import torch

import pytest

from benchutil import FULL, cuda, on_cuda

B, SECONDS, SR, N_FFT, HOP = (8, 2.0, 16000, 512, 128) if FULL else (4, 1.0, 8000, 256, 64)
THREADS = int(os.environ.get("CHIMERA_BENCH_THREADS", "1"))


def make_step(batch=B, seconds=SECONDS, sr=SR, n_fft=N_FFT, hop=HOP, device="cpu", amp_dtype=None, **model_kw):
    from chimera.models import SeparationModel, preset
    from chimera.objectives import objective
    from chimera.train.solver import _LossModule  # what the trainer runs: autocast on the network only

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = SeparationModel(preset("chimerapp", "small", stft={"sample_rate": sr, "n_fft": n_fft, "hop_length": hop},
                                   **model_kw)).to(device)
    obj = objective("chimera", alpha=0.975, mi="tpsa")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    sources = (0.1 * torch.randn(batch, 2, int(seconds * sr), generator=g)).to(device)
    mixture = sources.sum(1)
    loss_of = _LossModule(model, obj, lambda: torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of(mixture, sources)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

    return step


def examples_per_second(steps=None):
    """(examples per second over `steps` optimiser steps, the loss of the warm-up step)."""
    steps = steps or (10 if FULL else 20)
    step = make_step()
    first = step().item()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return B * steps / (time.perf_counter() - t0), first


def _in_subprocess(disable_ext):
    env = {**os.environ, "CHIMERA_DISABLE_EXT": "1" if disable_ext else ""}
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); import bench_train as b, json; "
            f"from chimera import ops; print(json.dumps([*b.examples_per_second(), ops.extension_info()['loaded']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_throughput(benchmark):
    from chimera import ops

    step = make_step()
    benchmark.group = "train-step chimerapp-small"
    benchmark.extra_info["shape"] = f"B={B}, {SECONDS} s at {SR} Hz, n_fft={N_FFT}, hop={HOP}, {THREADS} thread(s)"
    benchmark.extra_info["extension_loaded"] = ops.extension_info()["loaded"]
    benchmark.pedantic(step, rounds=5 if FULL else 10, warmup_rounds=1)
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["examples_per_s"] = round(B / benchmark.stats.stats.mean, 2)
        with_ext, loss, loaded = _in_subprocess(False)
        without_ext, reference_loss, disabled_loaded = _in_subprocess(True)
        # the ratio compares the kernels with their references on the same step: both sides
        # ran what they say, and the first step's loss is the same
        assert loaded and not disabled_loaded
        assert loss == pytest.approx(reference_loss, rel=1e-4)
        benchmark.extra_info["examples_per_s_ext_subprocess"] = round(with_ext, 2)
        benchmark.extra_info["examples_per_s_no_ext_subprocess"] = round(without_ext, 2)
        benchmark.extra_info["speedup_ext"] = round(with_ext / without_ext, 3)
        print(f"\ntrain throughput ({benchmark.extra_info['shape']}): with extension {with_ext:.1f} ex/s "
              f"(loaded={loaded}), CHIMERA_DISABLE_EXT=1 {without_ext:.1f} ex/s, ratio {with_ext / without_ext:.2f}")


@cuda
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("hidden,layers,batch", [(128, 2, 8), (128, 2, 32), (256, 2, 32), (300, 4, 32)])
def test_train_throughput_cuda(benchmark, hidden, layers, batch, amp):
    # The bundled model's shape (2 s at 16 kHz, n_fft 512); 2 x 128 is the bundled width,
    # 4 x 300 about the largest that keeps it under 20 MB in float16.
    dtype = {"fp32": None, "bf16": torch.bfloat16}[amp]
    step = on_cuda(make_step(batch, 2.0, 16000, 512, 128, device="cuda", amp_dtype=dtype, hidden=hidden,
                             layers=layers))
    benchmark.group = "train-step chimerapp cuda"
    benchmark.extra_info["shape"] = f"{layers} x {hidden} BLSTM, B={batch}, 2 s at 16 kHz, {amp}"
    benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    if benchmark.stats is not None:
        benchmark.extra_info["examples_per_s"] = round(batch / benchmark.stats.stats.mean, 1)
        print(f"\ntrain step on CUDA ({benchmark.extra_info['shape']}): {benchmark.stats.stats.mean * 1e3:.1f} ms, "
              f"{batch / benchmark.stats.stats.mean:.0f} examples/s")
