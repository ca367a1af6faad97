"""The training loop: stages of epochs of optimiser steps, with validation, checkpoints and exact
resume. :class:`Trainer` builds what a run needs and loops over the stages; ``_run_stage`` sets up
a stage (objective, optimiser, schedule), ``_run_epoch`` loops over its batches and ends the epoch
(validation, metrics row, checkpoints), ``_step`` takes one optimiser step. They share the run's
:class:`~chimera.train.state.Progress` and the stage's :class:`_Stage`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..atomic import atomic_write
from ..models import SeparationModel, StftConfig, fit_statistics, load_checkpoint, preset, save_checkpoint
from ..objectives import Objective, objective, permute_sources, pit, si_sdr
from ..separate import Separator
from .config import validate_config
from .data import build_dataset, check_batch, epoch_indices, epoch_key, loader
from .distrib import Dist, amp_dtype
from .errors import TrainError
from .records import MetricsLog, log_file
from .state import Progress, rank_part, rank_seed, seed_everything, set_rng_state, training_state

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def mkldnn_enabled(enabled: bool):
    """PyTorch's oneDNN CPU kernels on or off inside (its other backend flags untouched)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _float32(out):
    def up(t):
        if t is None or t.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
            return t
        return t.to(torch.complex64 if t.is_complex() else torch.float32)

    return dataclasses.replace(out, embedding=up(out.embedding), masks=up(out.masks), estimates=up(out.estimates))


def make_optimizer(model, stage: dict, tcfg: dict, steps_per_epoch: int):
    """A fresh Adam for ``stage`` and its learning-rate schedule: ``(optimizer, scheduler or None, kind)``."""
    opt = torch.optim.Adam(model.parameters(), lr=float(stage["lr"]), weight_decay=tcfg["weight_decay"])
    kind = stage.get("scheduler", tcfg["scheduler"])
    if kind == "plateau" and tcfg["plateau_factor"] == 1:
        kind = "constant"  # a factor of 1 never lowers the rate (and ReduceLROnPlateau refuses it)
    if kind == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=tcfg["plateau_factor"], patience=tcfg["plateau_patience"])
    elif kind == "cosine":
        total = max(1, stage["epochs"] * steps_per_epoch)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=stage["lr"] * tcfg["min_lr_ratio"])
    else:
        sched = None
    return opt, sched, kind


# settings that say where and how fast a run goes, not what it computes
_RUN_ONLY = {"seed", "train.threads", "train.device"}
#: A silent estimate's SI-SDR (-inf: nothing recovered) counts as this in validation's mean: a
#: very poor item, not an epoch that can never be best (k-means can leave a cluster empty, a
#: clipped-ReLU or codebook mask head can give exact zeros on a correct model).
SILENT_SI_SDR = -100.0


def config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two validated recipes (seed, threads and
    device left out: the seed has its own warning, the others do not change the result)."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after), key=str)
        return [c for k in keys for c in config_changes(before.get(k), after.get(k), f"{prefix}{k}.")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [c for i, (b, a) in enumerate(zip(before, after)) for c in config_changes(b, a, f"{prefix}{i}.")]
    key = prefix.rstrip(".")
    return [] if before == after or key in _RUN_ONLY else [key]


@torch.no_grad()
def validate(model, objective: Objective, batches, autocast, pit_metric: bool, seed: int) -> list[float]:
    """Sums over the validation ``batches`` of (loss × items, items, SI-SDR of the estimates,
    SI-SDR of the mixture, source pairs whose mixture has a finite SI-SDR: a silent reference
    has none). A silent estimate counts as ``SILENT_SI_SDR``, a NaN one makes the sum NaN.
    The estimates come from
    :meth:`chimera.separate.Separator.separate_batch`, the engine predict uses (mask head, else
    k-means on the embeddings)."""
    loss_sum = est_sum = mix_sum = 0.0
    count = pairs = 0
    separator = Separator(model, device=next(model.parameters()).device, seed=seed)
    was = model.training
    model.eval()
    try:
        for mix, src in batches:
            loss = _LossModule(model, objective, autocast)(mix, src)
            loss_sum += float(loss) * mix.shape[0]
            count += mix.shape[0]
            est = separator.separate_batch(mix)
            ref = src.to(torch.float64)
            if pit_metric:
                _, perm = pit(lambda a, b: -si_sdr(a, b), est.to(torch.float64), ref)
                est = permute_sources(est, perm)
            s_est = si_sdr(est, ref).clamp_min(SILENT_SI_SDR)  # (NaN stays NaN)
            s_mix = si_sdr(mix.unsqueeze(1).expand_as(src), ref)
            # silent references (or a mixture that is the reference alone) have no SI-SDR
            # improvement; the estimates count whatever theirs is: a NaN (corrupt) or silent one
            # dropped here left the others' mean, and such a model could become best.pt
            ok = torch.isfinite(s_mix)
            est_sum += float(s_est[ok].sum())
            mix_sum += float(s_mix[ok].sum())
            pairs += int(ok.sum())
    finally:
        model.train(was)
    return [loss_sum, count, est_sum, mix_sum, pairs]


@dataclasses.dataclass
class _Stage:
    """What the epochs and steps of one stage share."""

    index: int
    cfg: dict
    objective: Objective
    net: torch.nn.Module  # model + objective, under DDP when distributed
    opt: torch.optim.Optimizer
    sched: object
    sched_kind: str
    scaler: torch.amp.GradScaler
    clip: float
    steps_per_epoch: int
    pit_metric: bool


class Trainer:
    """Runs a validated config in ``run_dir`` (see :mod:`chimera.train`). Progress is logged to
    the ``chimera.train`` logger and to ``run_dir/train.log``; ``quiet`` hides the progress bars."""

    def __init__(self, config: dict, run_dir, *, resume: str | None = None, device: str | None = None,
                 quiet: bool = False):
        self.cfg = validate_config(config)
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        tcfg = self.cfg["train"]
        if tcfg["threads"]:
            torch.set_num_threads(int(tcfg["threads"]))
        # the run folder's checks first: a TrainError raised once the process group is up left
        # it to the caller, which closes that of a Trainer it got (NCCL warns at exit, or hangs)
        self.resume_path = None
        if resume is not None:
            self.resume_path = self.run_dir / "last.pt" if resume in ("", "last") else Path(resume)
            if not self.resume_path.is_file():
                raise TrainError(f"--resume: no checkpoint at {self.resume_path}")
        elif (self.run_dir / "last.pt").exists():
            raise TrainError(f"{self.run_dir} already holds a run (last.pt); use --resume to continue it "
                             f"or choose another --run-dir")
        self.dist = Dist(device or tcfg["device"])
        self.device = self.dist.device
        self.seed = self.cfg["seed"]
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        self.amp_dtype = amp_dtype(self.device, tcfg["amp"])
        self.metrics = MetricsLog(self.run_dir, enabled=self.dist.main)

    # -------------------------------------------------------------- the run
    def run(self) -> dict:
        """Train every stage from the start or the resumed position. Returns ``model``, the last
        epoch's ``metrics``, ``best_si_sdri``, ``steps`` (in all) and ``steps_run`` (by this call)."""
        with log_file(self.run_dir / "train.log", enabled=self.dist.main):
            model, resumed = self._prepare()
            progress = Progress.of(resumed) if resumed else Progress()
            first_step, self.last_row = progress.step, {}
            for si in range(progress.stage, len(self.cfg["stages"])):
                self._run_stage(model, si, progress, resumed)
                resumed = None
            self.metrics.close()
            self.dist.barrier()
            self._info(f"trained {progress.step} steps ({progress.step - first_step} in this session); best "
                       f"validation SI-SDRi {progress.best:.2f} dB; checkpoints in {self.run_dir}")
        return {"model": model, "metrics": self.last_row, "best_si_sdri": progress.best, "steps": progress.step,
                "steps_run": progress.step - first_step}

    def _prepare(self):
        """Seeds, data sets, the model (fresh, from ``train.init`` or resumed) and the run folder.
        Returns the model and the resumed checkpoint's training state (None for a new run)."""
        dcfg = self.cfg["data"]
        seed_everything(self.seed)
        state = init = None
        if self.resume_path is not None:  # its rate, not train.init's (which may be gone by now)
            model, state = self._resume()
            sr = model.stft.sample_rate
        else:
            init = self._load_init()
            sr = init.stft.sample_rate if init is not None else \
                int(self.cfg["model"].get("stft", {}).get("sample_rate", StftConfig().sample_rate))
        self.train_ds = build_dataset(dcfg, "train", sr, self.seed)
        self.valid_ds = build_dataset(dcfg, "valid", sr, self.seed)
        if state is None:
            model = init if init is not None else self._build_model()
            if init is None:
                self._fit_statistics(model)
            # a run killed between its first metrics row and its first checkpoint starts again
            # here (nothing to resume): its rows go, as a resumed run drops those after its checkpoint
            self.metrics.trim(0)
        try:
            model.to(self.device).train()
        except torch.cuda.OutOfMemoryError as e:
            raise TrainError(f"model: does not fit on {self.device}: {e}") from None
        if state is None and self.dist.world > 1:
            # the model is built alike on every rank; from here each rank draws its own dropout
            # masks (with one seed they drew the same ones). A single process keeps its stream.
            seed_everything(rank_seed(self.seed, self.dist.rank))
        if self.dist.main:
            with atomic_write(self.run_dir / "config.json", force=True) as f:
                f.write(json.dumps(self.cfg, indent=2).encode())
        self.metrics.open_tensorboard(self.run_dir / "tensorboard")
        return model, state

    def _run_stage(self, model, si: int, progress: Progress, resumed: dict | None) -> None:
        """Set up stage ``si`` (continuing a ``resumed`` checkpoint's training state) and run its epochs."""
        tcfg, stage = self.cfg["train"], self.cfg["stages"][si]
        obj = objective(stage["objective"], **stage["options"])
        bs = int(self.cfg["data"]["batch_size"])
        n_items = len(epoch_indices(len(self.train_ds), self.seed, si, 0, self.dist.rank, self.dist.world))
        steps_per_epoch = math.ceil(n_items / bs)
        if tcfg["max_steps_per_epoch"]:
            steps_per_epoch = min(steps_per_epoch, int(tcfg["max_steps_per_epoch"]))
        opt, sched, sched_kind = make_optimizer(model, stage, tcfg, steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if resumed is not None:
            if resumed["optimizer"]:  # empty at a stage boundary: the stage starts afresh
                opt.load_state_dict(resumed["optimizer"])
            if sched is not None and resumed["scheduler"] is not None:
                sched.load_state_dict(resumed["scheduler"])
            if resumed["scaler"] is not None:
                scaler.load_state_dict(resumed["scaler"])
            self._resume_rank(resumed, progress)
        else:
            progress.stage, progress.epoch, progress.batch = si, 0, 0
        clip = float(stage.get("grad_clip", tcfg["grad_clip"]) or 0)
        net = self.dist.wrap(_LossModule(model, obj, self._autocast))
        self._info(f"stage {si} ({stage['name']}): {obj!r}, {stage['epochs']} epochs, lr {stage['lr']}, "
                   f"{steps_per_epoch} steps/epoch")
        run = _Stage(si, stage, obj, net, opt, sched, sched_kind, scaler, clip, steps_per_epoch,
                     self._pit_metric(model))
        while progress.stage == si and progress.epoch < stage["epochs"]:
            self._run_epoch(model, run, progress)

    def _run_epoch(self, model, run: _Stage, progress: Progress) -> None:
        """The batches of ``progress.epoch`` from ``progress.batch`` on, then validation, the
        metrics row and the checkpoints; ``progress`` moves to the next epoch."""
        t0 = time.perf_counter()
        dcfg, stage, epoch = self.cfg["data"], run.cfg, progress.epoch
        bs, workers = int(dcfg["batch_size"]), int(dcfg["num_workers"])
        self.train_ds.set_epoch(epoch_key(run.index, epoch))
        order = epoch_indices(len(self.train_ds), self.seed, run.index, epoch, self.dist.rank, self.dist.world)
        order = order[:run.steps_per_epoch * bs]
        first = progress.batch
        if first == 0:
            progress.loss_sum, progress.count = 0.0, 0
        show = not self.quiet and self.dist.main and sys.stderr.isatty()
        bar = tqdm(loader(self.train_ds, bs, workers, order[first * bs:]), total=run.steps_per_epoch, initial=first,
                   file=sys.stderr, leave=False, disable=not show,
                   desc=f"{stage['name']} ep {epoch + 1}/{stage['epochs']}", dynamic_ncols=True)
        for b, batch in enumerate(bar, start=first):
            self._step(model, run, progress, check_batch(batch, "training"), b)
            bar.set_postfix(loss=f"{progress.loss_sum / progress.count:.4g}", refresh=False)
        bar.close()

        tr_loss = self.dist.sum([progress.loss_sum, progress.count])
        row = {"stage": run.index, "stage_name": stage["name"], "epoch": epoch + 1, "step": progress.step,
               "lr": run.opt.param_groups[0]["lr"], "train_loss": tr_loss[0] / max(1, tr_loss[1])}
        last_of_stage = epoch + 1 == stage["epochs"]
        if (epoch + 1) % max(1, int(self.cfg["train"]["valid_every"])) == 0 or last_of_stage:
            row.update(self._validate(model, run.objective, run.pit_metric))
            if run.sched_kind == "plateau" and math.isfinite(row["valid_loss"]):
                run.sched.step(row["valid_loss"])
        row["seconds"] = round(time.perf_counter() - t0, 3)
        self.metrics.row(row)
        self._info(f"stage {stage['name']} epoch {epoch + 1}/{stage['epochs']}: train loss {row['train_loss']:.4g}"
                   + (f", valid loss {row['valid_loss']:.4g}, SI-SDRi {row['valid_si_sdri']:.2f} dB"
                      if "valid_loss" in row else ""))
        improved = "valid_si_sdri" in row and math.isfinite(row["valid_si_sdri"]) and row["valid_si_sdri"] > progress.best
        if improved:
            progress.best = row["valid_si_sdri"]
        progress.next_epoch(stage["epochs"])
        state = self._state(run, progress, fresh=last_of_stage)
        # best.pt first: last.pt records the new best, so a run stopped between the two
        # writes would resume believing best.pt already held it
        if improved:
            self._save("best.pt", model, state)
        self._save("last.pt", model, state)
        self.last_row = row
        self.dist.barrier()

    def _step(self, model, run: _Stage, progress: Progress, batch: dict, b: int) -> None:
        """One optimiser step on ``batch``, the ``b``-th of the epoch (a checkpoint every
        ``train.checkpoint_every`` steps)."""
        mix = batch["mixture"].to(self.device, non_blocking=True)
        src = batch["sources"].to(self.device, non_blocking=True)
        run.opt.zero_grad(set_to_none=True)
        with mkldnn_enabled(self.cfg["train"]["mkldnn"]):  # the backward follows the forward's kernels
            loss = run.net(mix, src)
        finite = bool(torch.isfinite(loss))
        # every rank stops together, with this error: one rank raising alone left the others
        # in the gradients' all-reduce (a traceback from gloo when it went, or a wait)
        everywhere = self.dist.sum([float(not finite)])[0] == 0  # (without DDP: this rank's own)
        if not everywhere:
            self._stop(run, progress, b, f"loss is {loss.item()} (items {batch['name']})" if not finite
                       else "the loss is not finite on another rank")
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.opt)  # (fp16 only) clipping sees the true gradients
        # their norm, clipped to run.clip (math.inf leaves them as they are)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip or math.inf))
        if not math.isfinite(norm) and not run.scaler.is_enabled():
            # a finite loss can have a non-finite gradient (sqrt at 0): the step wrote NaN into every
            # weight and the next checkpoint saved them. (fp16's scaler skips such steps itself.)
            # After DDP's all-reduce every rank has the same gradients, so every rank stops here.
            self._stop(run, progress, b, f"the gradient is not finite (norm {norm})")
        run.scaler.step(run.opt)
        run.scaler.update()
        if run.sched_kind == "cosine":
            run.sched.step()
        progress.step += 1
        progress.batch = b + 1
        progress.loss_sum += float(loss.detach()) * mix.shape[0]
        progress.count += mix.shape[0]
        every = int(self.cfg["train"]["checkpoint_every"])
        if every and progress.step % every == 0 and b + 1 < run.steps_per_epoch:
            self._save("last.pt", model, self._state(run, progress))

    @staticmethod
    def _stop(run: _Stage, progress: Progress, b: int, why: str):
        """Stop the run at batch ``b`` of the epoch: the one line that names the step and ``why``."""
        raise TrainError(f"stage {run.cfg['name']} epoch {progress.epoch + 1} batch {b}: {why}; "
                         "lower the learning rate or check the data")

    def _validate(self, model, obj: Objective, pit_metric: bool) -> dict:
        """Validation loss and SI-SDR(i) over this rank's share of the validation set, summed over ranks."""
        dcfg = self.cfg["data"]
        bs = dcfg.get("valid_batch_size", dcfg["batch_size"])
        idx = list(range(self.dist.rank, len(self.valid_ds), self.dist.world))

        def batches():
            for b in loader(self.valid_ds, bs, int(dcfg["num_workers"]), idx):
                b = check_batch(b, "validation")
                yield b["mixture"].to(self.device), b["sources"].to(self.device)

        sums = validate(model, obj, batches(), self._autocast, pit_metric, self.seed)
        loss_sum, count, est_sum, mix_sum, pairs = self.dist.sum(sums)
        nan = float("nan")
        return {"valid_loss": loss_sum / count if count else nan,
                "valid_si_sdr": est_sum / pairs if pairs else nan,
                "valid_si_sdri": (est_sum - mix_sum) / pairs if pairs else nan}

    # -------------------------------------------------------------- set-up
    def _pit_metric(self, model) -> bool:
        """Whether validation scores the estimates in their best permutation: ``train.pit_metric``,
        else when any stage trains with PIT or the model has no mask head (k-means clusters come
        in no source order). One choice for the run: best.pt compares SI-SDRi across stages."""
        if self.cfg["train"]["pit_metric"] is not None:
            return self.cfg["train"]["pit_metric"]
        return model.mask_head is None or any(st["options"].get("pit", False) for st in self.cfg["stages"])

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _info(self, msg: str) -> None:
        if self.dist.main:
            log.info(msg)

    def _resume(self):
        try:
            model, state = load_checkpoint(self.resume_path)
        except Exception as e:
            raise TrainError(f"--resume: {e}") from None
        if state is None or "stage" not in state:
            raise TrainError(f"--resume: {self.resume_path} holds no training state")
        if state.get("world_size", 1) != self.dist.world:
            log.warning(f"resuming a {state['world_size']}-process run with {self.dist.world} processes: "
                        "the data order differs from the original run")
        if state.get("seed", self.seed) != self.seed:
            log.warning(f"resuming a run trained with seed {state['seed']} with seed {self.seed}: the data order "
                        f"differs from the original run (--seed {state['seed']} continues it exactly)")
        changed = config_changes(json.loads(state.get("config_json", "{}")), self.cfg)
        if changed:
            log.warning(f"resuming with a recipe that differs from the run's in {', '.join(changed)}")
        self.metrics.trim(state["global_step"])
        self._info(f"resuming from {self.resume_path} at step {state['global_step']}: stage {state['stage']}, "
                   f"epoch {state['epoch']}, batch {state['batch']}")
        return model, state

    def _load_init(self):
        """``train.init``'s model (weights and feature statistics), read once; None without it."""
        init = self.cfg["train"]["init"]
        if not init:
            return None
        try:
            return load_checkpoint(init)[0]
        except Exception as e:
            raise TrainError(f"train.init: {e}") from None

    def _build_model(self):
        """A fresh model of the recipe's [model] table."""
        mcfg = dict(self.cfg["model"])
        name, size = mcfg.pop("preset"), mcfg.pop("size")
        names = list(getattr(self.train_ds, "source_names", []))
        mcfg.setdefault("n_sources", len(names))
        if names and len(names) == mcfg["n_sources"]:
            mcfg.setdefault("source_names", names)
        try:
            config = preset(name, size, **mcfg)
        except (ValueError, TypeError) as e:
            raise TrainError(f"model: {e}") from None
        try:  # a valid config can still ask for more memory than there is (hidden = 10**12)
            return SeparationModel(config)
        except (RuntimeError, ValueError, TypeError) as e:
            raise TrainError(f"model: cannot be built: {e}") from None

    def _fit_statistics(self, model):
        bs, workers = int(self.cfg["data"]["batch_size"]), int(self.cfg["data"]["num_workers"])
        n = min(len(self.train_ds), bs * max(1, self.cfg["train"]["stats_batches"]))
        idx = epoch_indices(len(self.train_ds), self.seed, -1, 0)[:n]  # the same items on every rank
        fit_statistics(model, (check_batch(b)["mixture"] for b in loader(self.train_ds, bs, workers, idx)))

    # -------------------------------------------------------------- checkpoints
    def _state(self, run: _Stage, progress: Progress, fresh: bool = False) -> dict:
        """The training state to save (every rank calls it: under DDP it gathers the ranks' parts)."""
        ranks = self.dist.gather(rank_part(progress)) if self.dist.enabled else None
        return training_state(progress, run.opt, run.sched, run.scaler, seed=self.seed, world_size=self.dist.world,
                              config=self.cfg, fresh=fresh, ranks=ranks)

    def _resume_rank(self, state: dict, progress: Progress) -> None:
        """This rank's generators and running loss as saved: its own under DDP, the run's in a
        single process. A checkpoint of another number of ranks has none for this rank: its
        generators then start from its own seed, and rank 0 carries the saved ranks' loss."""
        ranks = state.get("ranks") or []
        if self.dist.world > 1 and len(ranks) == self.dist.world:
            own = ranks[self.dist.rank]
            set_rng_state(own["rng"])
            progress.loss_sum, progress.count = own["accum"]["loss_sum"], own["accum"]["count"]
            return
        if self.dist.world == 1:
            set_rng_state(state["rng"])
        else:
            seed_everything(rank_seed(self.seed, self.dist.rank, progress.step))
        if ranks:  # (a checkpoint without them holds the only running loss there is)
            main = self.dist.main
            progress.loss_sum = sum(r["accum"]["loss_sum"] for r in ranks) if main else 0.0
            progress.count = sum(r["accum"]["count"] for r in ranks) if main else 0

    def _save(self, name, model, state):
        if self.dist.main:
            save_checkpoint(self.run_dir / name, model, state)
