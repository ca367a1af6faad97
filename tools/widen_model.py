"""A trained model made wider without changing what it computes, to train further from.

    python -m tools.widen_model runs/demo-v4.pt runs/demo-v4-h256.pt --hidden 256

Each BLSTM layer of the checkpoint's trunk gets ``--hidden`` units per direction instead of
its own. The old units keep their weights. The new units get freshly initialised inputs
(from the layer's input and from every unit's previous state) but **zero weights out of
them**: into the old units' gates, into the next layer and into the heads. So the widened
model gives the same masks and embeddings as the checkpoint (to float rounding), and
training starts from the trained model instead of from scratch. The zero weights still get
gradients (the new units are active), so the new units join in from the first step
(Net2Net's idea, Chen, Goodfellow & Shlens 2016, with zero-initialised fan-out instead of
copied units).

Only models whose heads read the trunk (``mask_input = "trunk"``) and whose layers have no
residual connections are widened; anything else is refused with the reason. The output is
written atomically (complete or not at all); an existing file is replaced only with
``--force``, and never the checkpoint read.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import torch

from chimera.atomic import unwritable_folder
from chimera.models import CheckpointError, SeparationModel, load_checkpoint, save_checkpoint

GATES = 4  # an nn.LSTM stacks the input, forget, cell and output gates' rows


def _unit_rows(old: int, new: int) -> torch.Tensor:
    """Rows of the old units' gates in a (GATES·new, ...) LSTM weight."""
    return torch.cat([g * new + torch.arange(old) for g in range(GATES)])


def _output_columns(old: int, new: int) -> torch.Tensor:
    """Where the old (forward, backward) outputs sit in the widened (2·new) output."""
    return torch.cat([torch.arange(old), new + torch.arange(old)])


def widen(model: SeparationModel, hidden: int, generator: torch.Generator | None = None) -> SeparationModel:
    """A copy of ``model`` with ``hidden`` units per direction in each trunk layer, computing
    the same function (see the module docstring)."""
    cfg = model.config
    old = cfg.hidden
    if hidden < old:
        raise ValueError(f"widen: {hidden} units is narrower than the model's {old}")
    if cfg.residual:
        raise ValueError("widen: a trunk with residual connections is not supported")
    if model.mask_head is not None and cfg.mask_input != "trunk":
        raise ValueError(f"widen: the mask head reads {cfg.mask_input!r}, not the trunk")
    wide = SeparationModel(dataclasses.replace(cfg, hidden=hidden))
    bound = 1 / math.sqrt(hidden)  # nn.LSTM's own initialisation range
    rows, cols = _unit_rows(old, hidden), _output_columns(old, hidden)
    src, dst = model.state_dict(), wide.state_dict()
    with torch.no_grad():
        for name, t in dst.items():
            s = src[name]
            if not name.startswith("trunk.lstms."):
                if t.shape == s.shape:
                    t.copy_(s)
                elif t.dim() == 2 and t.shape[1] == 2 * hidden and s.shape[1] == 2 * old:
                    t.zero_()  # a head's weights: none from the new units
                    t[:, cols] = s
                else:
                    raise ValueError(f"{name} of shape {tuple(s.shape)} cannot be widened")
                continue
            _, _, layer, kind = name.split(".")  # trunk.lstms.<layer>.<weight|bias>_<ih|hh>_l0[_reverse]
            t.uniform_(-bound, bound, generator=generator)
            if kind.startswith("bias"):
                t[rows] = s
                # the new forget gates start open, as the trunk's own do
                t[hidden:2 * hidden][old:] = 1.0 if kind.startswith("bias_ih") else 0.0
                continue
            # the old units' gates read nothing from the new units...
            t[rows] = 0.0
            if kind.startswith("weight_hh"):
                t[rows[:, None], torch.arange(old)] = s
            elif layer == "0":
                t[rows] = s
            else:  # ... nor from the previous layer's new units
                t[rows[:, None], cols] = s
    wide.eval()
    return wide


def check_output(checkpoint: str, out: str, force: bool) -> None:
    """Refuse, in one line and before any work, an output that cannot or must not be written."""
    if os.path.isdir(out):
        raise SystemExit(f"widen_model: {out}: is a folder, not a file name")
    if os.path.exists(out) and os.path.exists(checkpoint) and os.path.samefile(out, checkpoint):
        raise SystemExit(f"widen_model: {out}: is the checkpoint read; write the widened model to another file")
    if os.path.exists(out) and not force:
        raise SystemExit(f"widen_model: {out}: exists (use --force to overwrite)")
    blocked = unwritable_folder(out)
    if blocked is not None:
        raise SystemExit(f"widen_model: {out}: cannot be written ({blocked} is not a writable folder)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="the trained model (a chimera checkpoint)")
    ap.add_argument("out", help="where to write the widened model (missing folders are made)")
    ap.add_argument("--hidden", type=int, required=True,
                    help="units per direction in each BLSTM layer (at least the checkpoint's)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new units' initial weights (default 0)")
    ap.add_argument("--force", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)
    check_output(args.checkpoint, args.out, args.force)
    if os.path.isdir(args.checkpoint):
        raise SystemExit(f"widen_model: {args.checkpoint}: is a folder, not a checkpoint file")
    try:
        model, _ = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f"widen_model: {e}") from None
    try:
        wide = widen(model, args.hidden, torch.Generator().manual_seed(args.seed))
    except ValueError as e:
        raise SystemExit(f"widen_model: {args.checkpoint}: {e}") from None
    try:  # atomic: complete or absent (chimera.atomic)
        save_checkpoint(args.out, wide)
    except OSError as e:
        raise SystemExit(f"widen_model: {args.out}: cannot be written ({e.strerror or e})") from None
    n = sum(p.numel() for p in wide.parameters())
    print(f"{args.out}: hidden {model.config.hidden} -> {args.hidden}, {n / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
