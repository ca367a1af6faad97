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
- Learning-rate schedule per stage, ``train.scheduler``: ``"plateau"`` (default; halve the
  rate when the validation loss has not improved for ``plateau_patience`` epochs — what the
  Chimera++/torch-chimera recipes do), ``"cosine"`` (per step down to ``lr·min_lr_ratio`` over
  the stage) or ``"constant"``.
- The data order is a pure function of ``(seed, stage, epoch)``: a DistributedSampler
  permutation (``num_replicas=1`` without DDP) seeded with ``seed + 1000·stage`` and
  ``set_epoch(epoch)``, and the data sets' own draws depend on ``(seed, epoch, index)`` only.
  A resumed run therefore rebuilds the epoch's order and skips the batches already consumed.
- ``best.pt`` is the checkpoint with the highest validation SI-SDR improvement (comparable
  across stages, unlike the losses).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import sys
import time
import tomllib
import warnings
from pathlib import Path

import numpy as np
import torch

TRAIN_DEFAULTS = {
    "grad_clip": 5.0,  # max global gradient norm; 0 disables
    "weight_decay": 0.0,
    "scheduler": "plateau",  # plateau | cosine | constant
    "plateau_factor": 0.5,
    "plateau_patience": 2,
    "min_lr_ratio": 0.01,  # cosine: final lr = lr * min_lr_ratio
    "checkpoint_every": 0,  # also write last.pt every N optimiser steps (0: only at epoch ends)
    "stats_batches": 4,  # training batches used to fit the feature statistics
    "amp": "auto",  # auto (bf16 if supported, else fp16, on CUDA only) | bf16 | fp16 | off
    "device": "auto",
    "pit_metric": None,  # SI-SDR with the best permutation; None: when the stage's objective uses PIT
    "max_steps_per_epoch": 0,  # 0: the whole epoch
    "valid_every": 1,  # validate every N epochs (and always at the end of a stage)
    "init": None,  # start from this checkpoint's weights (and statistics) instead of a fresh model
    "threads": 0,  # torch CPU threads (0: torch's default); --threads overrides
}
DATA_LOADER_KEYS = ("dataset", "batch_size", "valid_batch_size", "num_workers", "train", "valid")
STAGE_KEYS = ("name", "objective", "options", "alpha", "epochs", "lr", "grad_clip", "scheduler")
TOP_KEYS = ("seed", "model", "data", "train", "stages")
# Test hook: seconds to sleep after each step, so a test can kill a run mid-epoch.
_STEP_DELAY = float(os.environ.get("CHIMERA_TRAIN_STEP_DELAY", "0") or 0)
CSV_FIELDS = ("stage", "stage_name", "epoch", "step", "lr", "train_loss", "valid_loss", "valid_si_sdr",
              "valid_si_sdri", "seconds")


class TrainError(RuntimeError):
    """A problem with the recipe, the data or the run folder; the message says what."""


# ============================================================================ configuration

def load_config(path) -> dict:
    """A recipe from TOML (``.toml``) or, when PyYAML is installed, YAML (``.yaml``/``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such config file")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TrainError(f"{path}: YAML recipes need PyYAML (pip install pyyaml), or use TOML") from None
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise TrainError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(config, dict):
            raise TrainError(f"{path}: a recipe must be a mapping, got {type(config).__name__}")
        return config
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise TrainError(f"{path}: not valid TOML: {e}") from None


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings need no quotes on the command line


def apply_override(config: dict, item: str) -> None:
    """``a.b.0.c=value``: set a nested key (list items by index; ``stages.N`` may append)."""
    if "=" not in item:
        raise TrainError(f"override {item!r}: expected KEY=VALUE")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise TrainError(f"override {item!r}: empty key component")
    node = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise TrainError(f"override {item!r}: {'.'.join(parts[:i]) or 'list'} has {len(node)} items, "
                                 f"no index {part!r}")
            idx = int(part)
            if idx == len(node):
                node.append({})
            if last:
                node[idx] = _parse_value(text)
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = _parse_value(text)
            else:
                node = node.setdefault(part, [] if part == "stages" else {})
        else:
            raise TrainError(f"override {item!r}: {'.'.join(parts[:i])} is a value, not a table")


def validate_config(config: dict) -> dict:
    """Fill defaults and check names; returns a normalised deep copy."""
    cfg = copy.deepcopy(config)
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:
        raise TrainError(f"config: unknown top-level key(s) {unknown}; known: {list(TOP_KEYS)}")
    cfg.setdefault("seed", 0)
    if not isinstance(cfg["seed"], int):
        raise TrainError(f"config: seed must be an integer, got {cfg['seed']!r}")
    model = cfg.setdefault("model", {})
    model.setdefault("preset", "chimerapp")
    model.setdefault("size", "small")
    data = cfg.get("data")
    if not isinstance(data, dict) or "dataset" not in data:
        raise TrainError("config: a [data] table with a `dataset` is required")
    if data["dataset"] not in DATASETS:
        raise TrainError(f"config: unknown data.dataset {data['dataset']!r}; choose one of {sorted(DATASETS)}")
    data.setdefault("batch_size", 8)
    data.setdefault("num_workers", 0)
    data.setdefault("train", {})
    data.setdefault("valid", {})
    train = cfg.setdefault("train", {})
    unknown = sorted(set(train) - set(TRAIN_DEFAULTS))
    if unknown:
        raise TrainError(f"config: unknown [train] key(s) {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    for k, v in TRAIN_DEFAULTS.items():
        train.setdefault(k, v)
    if train["scheduler"] not in ("plateau", "cosine", "constant"):
        raise TrainError(f"config: train.scheduler must be plateau, cosine or constant, got {train['scheduler']!r}")
    if train["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise TrainError(f"config: train.amp must be auto, bf16, fp16 or off, got {train['amp']!r}")
    stages = cfg.get("stages")
    if not isinstance(stages, list) or not stages:
        raise TrainError("config: at least one [[stages]] table is required")
    from .objectives import objective

    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise TrainError(f"config: stages.{i} must be a table")
        unknown = sorted(set(st) - set(STAGE_KEYS))
        if unknown:
            raise TrainError(f"config: stages.{i}: unknown key(s) {unknown}; known: {list(STAGE_KEYS)}")
        for need in ("objective", "epochs", "lr"):
            if need not in st:
                raise TrainError(f"config: stages.{i} needs `{need}`")
        if not isinstance(st["epochs"], int) or st["epochs"] < 0:
            raise TrainError(f"config: stages.{i}.epochs must be an integer >= 0, got {st['epochs']!r}")
        if not isinstance(st["lr"], (int, float)) or st["lr"] <= 0:
            raise TrainError(f"config: stages.{i}.lr must be positive, got {st['lr']!r}")
        st.setdefault("name", f"{i}-{st['objective']}")
        st.setdefault("options", {})
        if "alpha" in st:
            st["options"]["alpha"] = st.pop("alpha")
        try:
            objective(st["objective"], **st["options"])
        except (ValueError, TypeError) as e:
            raise TrainError(f"config: stages.{i}: {e}") from None
    return cfg


# ============================================================================ data

def _datasets():
    from . import data as d

    return {"musdb18": d.MUSDB18, "dsd100": d.DSD100, "demo": d.DemoTracks, "wsj0mix": d.WSJ0Mix,
            "foldertuple": d.FolderTuple}


DATASETS = ("musdb18", "dsd100", "demo", "wsj0mix", "foldertuple")


def build_dataset(data_cfg: dict, split: str, sample_rate: int, seed: int):
    common = {k: v for k, v in data_cfg.items() if k not in DATA_LOADER_KEYS}
    kwargs = {**common, **data_cfg.get(split, {})}
    for k in ("gain_db",):
        if k in kwargs and kwargs[k] is not None:
            kwargs[k] = tuple(kwargs[k])
    cls = _datasets()[data_cfg["dataset"]]
    try:
        return cls(sample_rate=sample_rate, seed=seed, train=split == "train", **kwargs)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise TrainError(f"{split} data ({data_cfg['dataset']}): {e}") from None
    except Exception as e:
        from .data import AudioError

        if isinstance(e, AudioError):
            raise TrainError(f"{split} data: unreadable file: {e}") from None
        raise


class _Guarded(torch.utils.data.Dataset):
    """Turns an AudioError into an item that the collate function reports, so the main
    process gets the one-line message (with the path) instead of a worker traceback."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        from .data import AudioError

        try:
            return self.dataset[i]
        except AudioError as e:
            return {"error": str(e)}


def _collate(items):
    for it in items:
        if "error" in it:
            return {"error": it["error"]}
    return {"mixture": torch.stack([it["mixture"] for it in items]),
            "sources": torch.stack([it["sources"] for it in items]),
            "name": [it["name"] for it in items]}


def _check_batch(batch):
    if "error" in batch:
        raise TrainError(f"unreadable training data: {batch['error']}")
    return batch


def _loader(dataset, batch_size, num_workers, indices=None):
    ds = _Guarded(dataset)
    if indices is not None:
        ds = torch.utils.data.Subset(ds, indices)
    # Own generator: creating an iterator must not draw from the global RNG (exact resume).
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=_collate, generator=torch.Generator().manual_seed(0))


def epoch_indices(n: int, seed: int, stage: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's item order for an epoch: a pure function of its arguments."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed + 1000 * stage, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


# ============================================================================ state helpers

def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ============================================================================ distributed

class _Dist:
    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = device_arg
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError(f"device {device_arg!r}: CUDA is not available")
        if self.world > 1 and want == "cuda":
            want = f"cuda:{self.local_rank}"
        self.device = torch.device(want)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class _LossModule(torch.nn.Module):
    """Model + objective in one module, so DDP sees a plain tensor output. Under mixed
    precision only the network runs in autocast; the objective (DC sums over all bin pairs,
    STFTs of the sources) runs in float32 on float32 copies of the outputs."""

    def __init__(self, model, objective, autocast):
        super().__init__()
        self.model = model
        self.objective = objective
        self.autocast = autocast

    def forward(self, mixture, sources):
        with self.autocast():
            out = self.model(mixture)
        return self.objective(_float32(out), mixture, sources)


def _float32(out):
    import dataclasses

    def up(t):
        if t is None or t.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
            return t
        return t.to(torch.complex64 if t.is_complex() else torch.float32)

    return dataclasses.replace(out, embedding=up(out.embedding), masks=up(out.masks), estimates=up(out.estimates))


# ============================================================================ trainer

class Trainer:
    """Runs a validated config in ``run_dir``; see the module docstring."""

    def __init__(self, config: dict, run_dir, *, resume: str | None = None, device: str | None = None,
                 quiet: bool = False):
        self.cfg = validate_config(config)
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        tcfg = self.cfg["train"]
        if tcfg["threads"]:
            torch.set_num_threads(int(tcfg["threads"]))
        self.dist = _Dist(device or tcfg["device"])
        self.device = self.dist.device
        self.seed = self.cfg["seed"]
        self.resume_path = None
        if resume is not None:
            self.resume_path = self.run_dir / "last.pt" if resume in ("", "last") else Path(resume)
            if not self.resume_path.is_file():
                raise TrainError(f"--resume: no checkpoint at {self.resume_path}")
        elif (self.run_dir / "last.pt").exists():
            raise TrainError(f"{self.run_dir} already holds a run (last.pt); use --resume to continue it "
                             f"or choose another --run-dir")
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        self.amp_dtype = self._amp_dtype(tcfg["amp"])
        self.writer = None

    # -------------------------------------------------------------- setup
    def _amp_dtype(self, amp):
        if self.device.type != "cuda" or amp == "off":
            if amp in ("bf16", "fp16") and self.device.type != "cuda":
                warnings.warn(f"train.amp={amp!r} ignored: mixed precision is used on CUDA only", stacklevel=3)
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _log(self, msg):
        if self.dist.main and not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def _build_model(self, train_ds):
        from .models import SeparationModel, load_checkpoint, preset

        mcfg = dict(self.cfg["model"])
        name, size = mcfg.pop("preset"), mcfg.pop("size")
        init = self.cfg["train"]["init"]
        if init:
            try:
                model, _ = load_checkpoint(init)
            except Exception as e:
                raise TrainError(f"train.init: {e}") from None
            return model, True
        names = list(getattr(train_ds, "source_names", []))
        mcfg.setdefault("n_sources", len(names))
        if names and len(names) == mcfg["n_sources"]:
            mcfg.setdefault("source_names", names)
        try:
            config = preset(name, size, **mcfg)
        except (ValueError, TypeError) as e:
            raise TrainError(f"model: {e}") from None
        return SeparationModel(config), False

    def _sample_rate(self):
        st = self.cfg["model"].get("stft", {})
        if self.cfg["train"]["init"]:
            from .models import load_checkpoint

            return load_checkpoint(self.cfg["train"]["init"])[0].stft.sample_rate
        from .models import StftConfig

        return int(st.get("sample_rate", StftConfig().sample_rate))

    def _fit_statistics(self, model, train_ds, bs, workers):
        from .models import fit_statistics

        n = min(len(train_ds), bs * max(1, self.cfg["train"]["stats_batches"]))
        idx = epoch_indices(len(train_ds), self.seed, -1, 0)[:n]  # the same items on every rank
        mixtures = (_check_batch(b)["mixture"] for b in _loader(train_ds, bs, workers, idx))
        fit_statistics(model, mixtures)

    def _make_optimizer(self, model, stage, steps_per_epoch):
        tcfg = self.cfg["train"]
        opt = torch.optim.Adam(model.parameters(), lr=float(stage["lr"]), weight_decay=tcfg["weight_decay"])
        kind = stage.get("scheduler", tcfg["scheduler"])
        if kind == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=tcfg["plateau_factor"], patience=tcfg["plateau_patience"])
        elif kind == "cosine":
            total = max(1, stage["epochs"] * steps_per_epoch)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=stage["lr"] * tcfg["min_lr_ratio"])
        else:
            sched = None
        return opt, sched, kind

    # -------------------------------------------------------------- checkpoints
    def _save(self, name, model, state):
        if not self.dist.main:
            return
        from .models import save_checkpoint

        save_checkpoint(self.run_dir / name, model, state)

    def _state(self, stage_i, epoch, batch, step, opt, sched, scaler, accum, best):
        return {
            "stage": stage_i, "epoch": epoch, "batch": batch, "global_step": step,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": _rng_state(), "accum": dict(accum), "best": best, "seed": self.seed,
            "world_size": self.dist.world, "config_json": json.dumps(self.cfg),
        }

    # -------------------------------------------------------------- metrics
    def _metrics_row(self, row):
        if not self.dist.main:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        if self.writer is not None:
            for k in ("lr", "train_loss", "valid_loss", "valid_si_sdr", "valid_si_sdri"):
                v = row.get(k)
                if isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(f"{k}", v, row["step"])
            self.writer.flush()

    def _trim_metrics(self, step):
        """Drop rows written after the checkpoint we resume from (a kill between the CSV row
        and the checkpoint of an epoch end would otherwise repeat that epoch's row)."""
        path = self.run_dir / "metrics.csv"
        if not self.dist.main or not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["step"]) <= step]
        if len(keep) != len(rows):
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                w.writeheader()
                w.writerows(keep)
            os.replace(tmp, path)

    def _open_tensorboard(self):
        if not self.dist.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    @torch.no_grad()
    def validate(self, model, objective, valid_ds, pit_metric) -> dict:
        from .objectives import pit, si_sdr
        from .separate import Separator

        separator = Separator(model, device=self.device, seed=self.seed)  # what predict runs, batch-wise
        bs = self.cfg["data"].get("valid_batch_size", self.cfg["data"]["batch_size"])
        n = len(valid_ds)
        idx = list(range(self.dist.rank, n, self.dist.world))
        was = model.training
        model.eval()
        loss_sum = est_sum = mix_sum = 0.0
        count = pairs = 0
        try:
            for batch in _loader(valid_ds, bs, int(self.cfg["data"]["num_workers"]), idx):
                if "error" in batch:
                    raise TrainError(f"unreadable validation data: {batch['error']}")
                mix = batch["mixture"].to(self.device)
                src = batch["sources"].to(self.device)
                loss = _LossModule(model, objective, self._autocast)(mix, src)
                loss_sum += float(loss) * mix.shape[0]
                count += mix.shape[0]
                est = separator.separate_batch(mix)
                ref = src.to(torch.float64)
                if pit_metric:
                    _, perm = pit(lambda a, b: -si_sdr(a, b), est.to(torch.float64), ref)
                    est = torch.gather(est, 1, perm[..., None].expand_as(est))
                s_est = si_sdr(est, ref)
                s_mix = si_sdr(mix.unsqueeze(1).expand_as(src), ref)
                ok = torch.isfinite(s_est) & torch.isfinite(s_mix)  # silent references have no SI-SDR
                est_sum += float(s_est[ok].sum())
                mix_sum += float(s_mix[ok].sum())
                pairs += int(ok.sum())
        finally:
            model.train(was)
        loss_sum, count, est_sum, mix_sum, pairs = self.dist.sum([loss_sum, count, est_sum, mix_sum, pairs])
        nan = float("nan")
        return {"valid_loss": loss_sum / count if count else nan,
                "valid_si_sdr": est_sum / pairs if pairs else nan,
                "valid_si_sdri": (est_sum - mix_sum) / pairs if pairs else nan}

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    # -------------------------------------------------------------- main loop
    def run(self) -> dict:
        from tqdm import tqdm

        from .models import load_checkpoint
        from .objectives import objective as make_objective

        cfg, tcfg, dcfg = self.cfg, self.cfg["train"], self.cfg["data"]
        _seed_everything(self.seed)
        sr = self._sample_rate()
        train_ds = build_dataset(dcfg, "train", sr, self.seed)
        valid_ds = build_dataset(dcfg, "valid", sr, self.seed)
        bs, workers = int(dcfg["batch_size"]), int(dcfg["num_workers"])

        state = None
        if self.resume_path is not None:
            try:
                model, state = load_checkpoint(self.resume_path)
            except Exception as e:
                raise TrainError(f"--resume: {e}") from None
            if state is None or "stage" not in state:
                raise TrainError(f"--resume: {self.resume_path} holds no training state")
            if state.get("world_size", 1) != self.dist.world:
                warnings.warn(f"resuming a {state['world_size']}-process run with {self.dist.world} processes: "
                              "the data order differs from the original run", stacklevel=2)
            self._trim_metrics(state["global_step"])
            self._log(f"resuming from {self.resume_path}: stage {state['stage']}, epoch {state['epoch']}, "
                      f"batch {state['batch']}")
        else:
            model, from_init = self._build_model(train_ds)
            if not from_init:
                self._fit_statistics(model, train_ds, bs, workers)
        model.to(self.device).train()
        if self.dist.main:
            with open(self.run_dir / "config.json", "w") as f:
                json.dump(cfg, f, indent=2)
        self._open_tensorboard()

        start_stage = state["stage"] if state else 0
        step = state["global_step"] if state else 0
        best = state["best"] if state else -math.inf
        last_metrics = {}
        for si in range(start_stage, len(cfg["stages"])):
            stage = cfg["stages"][si]
            obj = make_objective(stage["objective"], **stage["options"])
            pit_metric = tcfg["pit_metric"]
            if pit_metric is None:
                pit_metric = bool(stage["options"].get("pit", False))
            n_items = len(epoch_indices(len(train_ds), self.seed, si, 0, self.dist.rank, self.dist.world))
            steps_per_epoch = math.ceil(n_items / bs)
            if tcfg["max_steps_per_epoch"]:
                steps_per_epoch = min(steps_per_epoch, int(tcfg["max_steps_per_epoch"]))
            opt, sched, sched_kind = self._make_optimizer(model, stage, steps_per_epoch)
            scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
            start_epoch, start_batch = 0, 0
            accum = {"loss_sum": 0.0, "count": 0}
            if state is not None and si == start_stage:
                if state["optimizer"]:  # empty at a stage boundary: the stage starts afresh
                    opt.load_state_dict(state["optimizer"])
                if sched is not None and state["scheduler"] is not None:
                    sched.load_state_dict(state["scheduler"])
                if state["scaler"] is not None:
                    scaler.load_state_dict(state["scaler"])
                start_epoch, start_batch = state["epoch"], state["batch"]
                accum = dict(state["accum"])
                _set_rng_state(state["rng"])
            clip = float(stage.get("grad_clip", tcfg["grad_clip"]) or 0)
            net = _LossModule(model, obj, self._autocast)
            if self.dist.enabled:
                from torch.nn.parallel import DistributedDataParallel

                # Some stages leave a head unused (DC only, WA only), hence find_unused_parameters.
                net = DistributedDataParallel(
                    net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=True)
            self._log(f"stage {si} ({stage['name']}): {obj!r}, {stage['epochs']} epochs, lr {stage['lr']}, "
                      f"{steps_per_epoch} steps/epoch")
            for epoch in range(start_epoch, stage["epochs"]):
                t0 = time.perf_counter()
                train_ds.set_epoch(epoch + 1000 * si)
                order = epoch_indices(len(train_ds), self.seed, si, epoch, self.dist.rank, self.dist.world)
                order = order[:steps_per_epoch * bs]
                first = start_batch if epoch == start_epoch else 0
                if first == 0:
                    accum = {"loss_sum": 0.0, "count": 0}
                loader = _loader(train_ds, bs, workers, order[first * bs:])
                show = not self.quiet and self.dist.main and sys.stderr.isatty()
                bar = tqdm(loader, total=steps_per_epoch, initial=first, file=sys.stderr, leave=False,
                           disable=not show, desc=f"{stage['name']} ep {epoch + 1}/{stage['epochs']}",
                           dynamic_ncols=True)
                for b, batch in enumerate(bar, start=first):
                    batch = _check_batch(batch)
                    mix = batch["mixture"].to(self.device, non_blocking=True)
                    src = batch["sources"].to(self.device, non_blocking=True)
                    opt.zero_grad(set_to_none=True)
                    loss = net(mix, src)
                    if not torch.isfinite(loss):
                        raise TrainError(f"stage {stage['name']} epoch {epoch + 1} batch {b}: loss is {float(loss)} "
                                         f"(items {batch['name']}); lower the learning rate or check the data")
                    scaler.scale(loss).backward()
                    if clip:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                    scaler.step(opt)
                    scaler.update()
                    if sched_kind == "cosine":
                        sched.step()
                    step += 1
                    accum["loss_sum"] += float(loss.detach()) * mix.shape[0]
                    accum["count"] += mix.shape[0]
                    bar.set_postfix(loss=f"{accum['loss_sum'] / accum['count']:.4g}", refresh=False)
                    every = int(tcfg["checkpoint_every"])
                    if every and step % every == 0 and b + 1 < steps_per_epoch:
                        self._save("last.pt", model,
                                   self._state(si, epoch, b + 1, step, opt, sched, scaler, accum, best))
                    if _STEP_DELAY:
                        time.sleep(_STEP_DELAY)
                bar.close()
                tr_loss = self.dist.sum([accum["loss_sum"], accum["count"]])
                row = {"stage": si, "stage_name": stage["name"], "epoch": epoch + 1, "step": step,
                       "lr": opt.param_groups[0]["lr"], "train_loss": tr_loss[0] / max(1, tr_loss[1])}
                last_stage_epoch = epoch + 1 == stage["epochs"]
                if (epoch + 1) % max(1, int(tcfg["valid_every"])) == 0 or last_stage_epoch:
                    row.update(self.validate(model, obj, valid_ds, pit_metric))
                    if sched_kind == "plateau" and math.isfinite(row["valid_loss"]):
                        sched.step(row["valid_loss"])
                row["seconds"] = round(time.perf_counter() - t0, 3)
                self._metrics_row(row)
                self._log(f"stage {stage['name']} epoch {epoch + 1}/{stage['epochs']}: train loss "
                          f"{row['train_loss']:.4g}" + (f", valid loss {row['valid_loss']:.4g}, SI-SDRi "
                                                        f"{row['valid_si_sdri']:.2f} dB" if "valid_loss" in row
                                                        else ""))
                improved = "valid_si_sdri" in row and math.isfinite(row["valid_si_sdri"]) and \
                    row["valid_si_sdri"] > best
                if improved:
                    best = row["valid_si_sdri"]
                # Position: the next epoch of this stage, or the start of the next stage.
                nxt = (si, epoch + 1) if not last_stage_epoch else (si + 1, 0)
                st = self._state(nxt[0], nxt[1], 0, step, opt, sched, scaler, {"loss_sum": 0.0, "count": 0}, best)
                if last_stage_epoch:
                    st.update(optimizer={}, scheduler=None, scaler=None)  # the next stage starts afresh
                self._save("last.pt", model, st)
                if improved:
                    self._save("best.pt", model, st)
                last_metrics = row
                self.dist.barrier()
            state = None
        if self.writer is not None:
            self.writer.close()
        self.dist.barrier()
        return {"model": model, "metrics": last_metrics, "best_si_sdri": best, "steps": step}


# ============================================================================ CLI

def train_main(args) -> int:
    try:
        if args.config is not None:
            config = load_config(args.config)
        elif args.resume is not None:
            path = Path(args.run_dir or ".") / "config.json"
            if not path.is_file():
                raise TrainError(f"--resume without CONFIG needs {path}")
            config = json.loads(path.read_text())
        else:
            raise TrainError("a CONFIG file is required (unless resuming a run with --run-dir)")
        for item in args.set or []:
            apply_override(config, item)
        if args.seed is not None:
            config["seed"] = args.seed
        run_dir = args.run_dir or (os.path.join("runs", Path(args.config).stem) if args.config else ".")
        if args.threads:
            config.setdefault("train", {})["threads"] = args.threads
        trainer = Trainer(config, run_dir, resume=args.resume, device=args.device, quiet=args.quiet)
        try:
            result = trainer.run()
        finally:
            trainer.dist.close()
    except TrainError as e:
        print(f"chimera train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chimera train: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result['steps']} steps; best validation SI-SDRi {result['best_si_sdri']:.2f} dB; "
              f"checkpoints in {run_dir}")
    return 0


def add_parser(subparsers):
    """Add the ``train`` subcommand to a ``chimera`` argparse subparsers object."""
    p = subparsers.add_parser("train", help="train a model from a TOML recipe (staged, resumable, DDP)",
                              description="Train a separation model from a recipe (see recipes/).")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="TOML recipe (optional with --resume)")
    p.add_argument("--run-dir", help="folder for checkpoints and metrics (default runs/<config name>)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue from RUN_DIR/last.pt (or the given checkpoint)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. stages.0.epochs=2 (repeatable)")
    p.add_argument("--device", help="cpu, cuda or auto (default: train.device)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=train_main)
    return p
