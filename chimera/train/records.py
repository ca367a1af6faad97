"""What a run writes besides checkpoints: ``train.log`` (the ``chimera.train`` log), ``metrics.csv``
(one row per epoch) and, when the tensorboard package is installed, TensorBoard scalars."""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
from pathlib import Path

from ..atomic import atomic_write

LOG = logging.getLogger("chimera.train")
CSV_FIELDS = ("stage", "stage_name", "epoch", "step", "lr", "train_loss", "valid_loss", "valid_si_sdr",
              "valid_si_sdri", "seconds")
_SCALARS = ("lr", "train_loss", "valid_loss", "valid_si_sdr", "valid_si_sdri")


@contextlib.contextmanager
def _attached(handler: logging.Handler):
    # The INFO records must reach the handler whatever level the application left the logger at.
    level = LOG.level
    LOG.setLevel(logging.INFO)
    LOG.addHandler(handler)
    try:
        yield handler
    finally:
        LOG.removeHandler(handler)
        handler.close()
        LOG.setLevel(level)


@contextlib.contextmanager
def log_file(path: Path, enabled: bool = True):
    """Append the ``chimera.train`` log to ``path`` while the block runs. An exception that ends
    the block is recorded there too, and only there: whoever catches it reports it to the user."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    with _attached(handler):
        try:
            yield
        except BaseException as e:
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped: {type(e).__name__}: {e}"
            handler.handle(LOG.makeRecord(LOG.name, logging.ERROR, __file__, 0, why, None, None))
            raise


class _ConsoleFormat(logging.Formatter):
    def format(self, record):
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"chimera train: {message}"


@contextlib.contextmanager
def console(stream, quiet: bool = False):
    """The ``chimera train`` command's view of the log on ``stream``: progress lines unless
    ``quiet``, and always warnings and errors (prefixed ``chimera train:``). While it is
    attached, ``chimera.train`` records stop at it instead of also reaching the handler the
    CLI puts on the ``chimera`` logger (each line once)."""
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(_ConsoleFormat("%(message)s"))
    propagate = LOG.propagate
    LOG.propagate = False
    try:
        with _attached(handler):
            yield handler
    finally:
        LOG.propagate = propagate


class MetricsLog:
    """``metrics.csv`` and TensorBoard, written by the main process only (``enabled``)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        self.resumed_step = None  # set by trim: TensorBoard drops its points after that step

    def open_tensorboard(self, folder: Path) -> None:
        if not self.enabled:
            return
        try:  # optional: TensorBoard scalars only when the tensorboard package is installed
            from torch.utils.tensorboard import SummaryWriter
        except Exception:
            return
        # A resumed run replaces the points of the steps after its checkpoint (the killed run's
        # are in an older event file: without purge_step TensorBoard showed both).
        purge = None if self.resumed_step is None else self.resumed_step + 1
        self.writer = SummaryWriter(str(folder), purge_step=purge)

    def row(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists() or self.path.stat().st_size == 0  # (empty: killed before its first row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        if self.writer is not None:
            for k in _SCALARS:
                v = row.get(k)
                if isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["step"])
            self.writer.flush()

    def trim(self, step: int) -> None:
        """Drop rows written after ``step``, the step of the checkpoint we resume from (a kill
        between an epoch's row and its checkpoint would otherwise repeat that epoch's row), and
        a row torn by a crash. TensorBoard's points after ``step`` go when it is opened."""
        self.resumed_step = step
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if _complete(r) and int(r["step"]) <= step]
        if len(keep) != len(rows):
            text = io.StringIO(newline="")
            w = csv.DictWriter(text, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(keep)
            with atomic_write(self.path, force=True) as f:
                f.write(text.getvalue().encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _complete(row: dict) -> bool:
    """A ``metrics.csv`` row with every field and an integer step (not one cut short)."""
    return None not in row.values() and row["step"].isdigit()
