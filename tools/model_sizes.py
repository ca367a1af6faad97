"""Size and CPU cost of candidate full-band model shapes (how recipes/fullband.toml was sized).

    /work/coord/quiet .venv/bin/python tools/model_sizes.py 128,2,20,2048,512 192,2,12,2048,512

Each argument is ``hidden,layers,embedding_dim,n_fft,hop`` of a Chimera++ model at 44.1 kHz
(whole numbers, each >= 1; hop at most n_fft / 2), all checked before any is measured.
Prints the parameter count, the float16 size (2 bytes a parameter, in MB of 10^6 bytes: what
``save_checkpoint(..., weights_dtype=torch.float16)`` writes, but for some kB of configuration
and float32 feature statistics), the median time of a training step (batch 8 x
2 s, forward, Chimera++ objective, backward, Adam; 4 steps after a warm-up) and the time of a
mask-inference forward pass on 20 s of stereo with the embedding head skipped, all on
``--threads`` torch threads (default 2). Run it under /work/coord/quiet.
"""
import argparse
import statistics
import sys
import time

import torch

from chimera.models import SeparationModel, preset
from chimera.objectives import objective

RATE = 44100


def config(hidden, layers, dim, n_fft, hop):
    """The Chimera++ configuration of one shape (ValueError for an impossible one)."""
    return preset("chimerapp", "small", hidden=hidden, layers=layers, embedding_dim=dim,
                  stft=dict(sample_rate=RATE, n_fft=n_fft, hop_length=hop, window="sqrt_hann"),
                  n_sources=2, source_names=("vocals", "accompaniment"))


def shape(text: str) -> tuple:
    """An argparse type: ``hidden,layers,embedding_dim,n_fft,hop``, five whole numbers >= 1
    that make a model (the Chimera++ objective needs the embedding head: D >= 1)."""
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(parts) != 5 or len(values) != 5 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected hidden,layers,embedding_dim,n_fft,hop, five whole "
                                         "numbers >= 1 (e.g. 192,2,12,2048,512)")
    try:
        config(*values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return values


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return n


def measure(hidden, layers, dim, n_fft, hop, batch=8, seconds=2.0):
    model = SeparationModel(config(hidden, layers, dim, n_fft, hop))
    params = sum(p.numel() for p in model.parameters())
    obj = objective("chimera", alpha=0.95, mi="tpsa")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sources = 0.1 * torch.randn(batch, 2, int(seconds * RATE), generator=torch.Generator().manual_seed(0))
    mixture = sources.sum(1)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        loss = obj(model(mixture), mixture, sources)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[1:])  # of 4: the mean of the middle two, not the upper one
    model.eval()
    with torch.no_grad():
        x = 0.1 * torch.randn(2, 20 * RATE)
        model(x, need_embedding=False)
        t = time.perf_counter()
        model(x, need_embedding=False)
        infer = time.perf_counter() - t
    return params, step, infer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="+", type=shape, metavar="SHAPE",
                    help="hidden,layers,embedding_dim,n_fft,hop (e.g. 192,2,12,2048,512)")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("| hidden × layers | D | n_fft / hop | parameters | float16 | train step (8 × 2 s) | 20 s stereo, mask inference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for h, n, d, nf, hp in a.shapes:
        params, step, infer = measure(h, n, d, nf, hp)
        print(f"| {h} × {n} | {d} | {nf} / {hp} | {params / 1e6:.2f} M | {2 * params / 1e6:.1f} MB | "
              f"{step:.2f} s | {infer:.2f} s (RTF {infer / 20:.3f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
