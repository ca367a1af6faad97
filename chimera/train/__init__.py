"""`chimera train`: staged training (e.g. DC → DC+MI → WA) from a TOML recipe.

A recipe (see ``recipes/``) has four parts::

    seed = 0
    [model]            # preset name and size, plus any ModelConfig field as an override
    preset = "chimerapp"
    size = "small"
    stft = {sample_rate = 16000, n_fft = 512, hop_length = 128}
    [data]             # data set, loader, and keyword arguments shared by train and valid
    dataset = "demo"   # musdb18 | dsd100 | demo | wsj0mix | foldertuple
    root = "demo-data/musdb"
    batch_size = 8
    [data.train]       # keyword arguments of the training data set only
    split = "train"
    segment_seconds = 2.0
    [data.valid]       # ... and of the (deterministic) validation data set
    split = "valid"
    [train]            # optimiser and loop settings (see TRAIN_DEFAULTS)
    grad_clip = 5.0
    [[stages]]         # one table per stage, run in order
    objective = "dc"
    epochs = 10
    lr = 1e-3

Command-line overrides: ``--set stages.0.epochs=2 --set data.batch_size=4`` (the value is
parsed as TOML, falling back to a plain string).

Design choices:

- A fresh Adam per stage (the objectives' scales differ, so old moment estimates mislead),
  with that stage's learning rate; gradients clipped by global norm (``grad_clip``).
- Learning-rate schedule per stage, ``train.scheduler``: ``"plateau"`` (default; multiply the
  rate by ``plateau_factor`` once ``plateau_patience`` + 1 validations in a row have not
  bettered the best validation loss, PyTorch's ``ReduceLROnPlateau`` with that patience; a
  validation every ``valid_every`` epochs — what the Chimera++/torch-chimera recipes do), ``"cosine"`` (per step down to ``lr·min_lr_ratio`` over
  the stage) or ``"constant"``.
- The data order is a pure function of ``(seed, stage, epoch)``: a DistributedSampler
  permutation (``num_replicas=1`` without DDP) seeded with ``seed`` and
  ``set_epoch(epoch_key(stage, epoch))`` (``epoch + 1000·stage`` below 1000 epochs), and the
  data sets' own draws depend on ``(seed, epoch_key, index)`` only.
  A resumed run therefore rebuilds the epoch's order and skips the batches already consumed.
- Under DDP (``torchrun``) the ranks build the same model from ``seed``, then each reseeds the
  global generators with its own seed (``state.rank_seed``): dropout masks differ between
  ranks; each rank's generators (and running loss) are saved for resume. A single process
  keeps the one stream.
  ``train.device`` "auto"/"cuda" is the GPU of each process's ``LOCAL_RANK``; "cuda:N" is
  refused there (every rank would take GPU N).
- ``best.pt`` is the checkpoint with the highest validation SI-SDR improvement (comparable
  across stages, unlike the losses).
- The run folder holds ``last.pt``/``best.pt``, ``config.json`` (the validated recipe, which
  ``--resume`` without CONFIG reads), ``metrics.csv``, ``train.log`` (the ``chimera.train`` log,
  appended by every session) and ``tensorboard/`` when tensorboard is installed.

Modules: :mod:`.config` (recipes), :mod:`.data` (data sets, loaders, epoch order), :mod:`.state`
(checkpointed position and RNG state), :mod:`.distrib` (device, DDP), :mod:`.records`
(train.log, metrics.csv), :mod:`.solver` (the loop); :func:`main` is ``chimera train`` (its
options are declared in :mod:`chimera.cli`).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .config import MAX_SEED, TRAIN_DEFAULTS, apply_override, load_config, validate_config
from .data import DATASETS, build_dataset, epoch_indices
from .errors import TrainError
from .records import LOG, console
from .solver import Trainer

__all__ = ["DATASETS", "TRAIN_DEFAULTS", "TrainError", "Trainer", "apply_override", "build_dataset",
           "epoch_indices", "load_config", "main", "validate_config"]


def _config(args) -> dict:
    if args.config is not None:
        source = args.config
        config = load_config(args.config)
    elif args.resume is not None:
        source = Path(args.run_dir or ".") / "config.json"
        if not source.is_file():
            raise TrainError(f"--resume without CONFIG needs {source}")
        config = json.loads(source.read_text())
    else:
        raise TrainError("a CONFIG file is required (unless resuming a run with --run-dir)")
    for item in args.set or []:
        apply_override(config, item)
    if args.seed is not None:
        if not 0 <= args.seed <= MAX_SEED:  # not the recipe's mistake: name the option
            raise TrainError(f"--seed must be >= 0 and <= {MAX_SEED}, got {args.seed}")
        config["seed"] = args.seed
    if args.threads and isinstance(config.setdefault("train", {}), dict):  # (else validation names it)
        config["train"]["threads"] = args.threads
    try:  # here, so that a mistake names the recipe (the Trainer validates again, for API users)
        validate_config(config)
    except TrainError as e:
        raise TrainError(f"{source}: {str(e).removeprefix('config: ')}"
                         + (" (after --set)" if args.set else "")) from None
    return config


def main(args) -> int:
    """``chimera train`` with parsed ``args``: 0 when done, 2 on a TrainError (one line on
    stderr), 130 when interrupted. Progress lines go to stderr unless ``--quiet`` (rank 0 only)."""
    # a malformed RANK is Dist's one-line error below, not a ValueError here
    quiet = args.quiet or os.environ.get("RANK", "0").strip() not in ("0", "")
    with console(sys.stderr, quiet=quiet):
        try:
            config = _config(args)
            run_dir = args.run_dir or (os.path.join("runs", Path(args.config).stem) if args.config else ".")
            trainer = Trainer(config, run_dir, resume=args.resume, device=args.device, quiet=args.quiet)
            try:
                trainer.run()
            finally:
                trainer.dist.close()
        except TrainError as e:
            LOG.error("error: %s", e)
            return 2
        except KeyboardInterrupt:
            LOG.error("interrupted (resume with --resume)")
            return 130
        except Exception as e:
            if not _interrupted(e):
                raise
            LOG.error("interrupted (resume with --resume)")
            return 130
    return 0


def _interrupted(exc) -> bool:
    """Whether `exc` was raised while a KeyboardInterrupt unwound (torch.save's zip writer,
    interrupted mid-checkpoint, raises "unexpected pos" when it is closed)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False
