"""Self-describing single-file checkpoints.

A checkpoint is a ``torch.save``d dict of plain containers, primitives and CPU tensors,
so ``torch.load(path, weights_only=True)`` reads it anywhere:

``format`` ("chimera.checkpoint"), ``version``, ``chimera_version``, ``model_config``
(``ModelConfig.to_dict()``), ``stft`` (sample rate, n_fft, hop, window), ``source_names``,
``feature_stats`` (``mean``/``std`` per frequency), ``state_dict`` (weights, feature
statistics included), ``checksum`` (SHA-256 over configs and weights) and optionally
``training_state`` (any weights_only-loadable dict: optimizer state, step, ...).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import re

import torch

from .._version import __version__
from ..atomic import atomic_write
from .config import ModelConfig, StftConfig
from .model import SeparationModel

FORMAT = "chimera.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A file that is not a usable chimera checkpoint; the message names the file and why."""


def _checksum(meta: dict, state_dict: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state_dict[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cpu(obj):
    # Training state may hold device tensors; keep it loadable on a CPU-only machine.
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


# What torch.load(weights_only=True) reads back, by exact type (a NumPy scalar subclasses float
# but is pickled as a NumPy object, which it refuses).
_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device, torch.Size)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)


def _unreadable(obj, where="training_state"):
    """Where in ``obj`` a value sits that a weights_only load cannot read back, or None."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return None
    if type(obj) not in _CONTAINERS:
        return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        bad = (_unreadable(k, f"a key of {where}") if isinstance(obj, dict) else None) or _unreadable(v, f"{where}[{k!r}]")
        if bad:
            return bad
    return None


def save_checkpoint(path, model: SeparationModel, training_state: dict | None = None,
                    weights_dtype: torch.dtype | None = None) -> None:
    """Write ``model`` (and optional ``training_state``) to ``path`` atomically (see
    :mod:`chimera.atomic`): it appears complete, fsynced, or not at all.

    ``weights_dtype`` (e.g. ``torch.float16``) stores the learned weights in that precision
    to halve a shipped model's size; loading casts them back to the model's float32. The
    feature statistics stay in full precision.
    """
    if not isinstance(model, SeparationModel):
        raise TypeError(f"save_checkpoint: expected a SeparationModel, got {type(model).__name__}")
    if training_state is not None and not isinstance(training_state, dict):
        raise TypeError(f"save_checkpoint: training_state must be a dict, got {type(training_state).__name__}")
    bad = _unreadable(training_state) if training_state is not None else None
    if bad:  # refused before writing: the file would replace `path` and never load
        raise TypeError(f"save_checkpoint: {bad}, which a weights_only load cannot read back; "
                        "store plain numbers, strings, containers and tensors")
    if weights_dtype is not None and not (isinstance(weights_dtype, torch.dtype) and weights_dtype.is_floating_point):
        raise TypeError(f"save_checkpoint: weights_dtype must be a floating dtype, got {weights_dtype!r}")
    cfg = model.config

    def stored(name, t):
        t = t.detach().cpu().clone()
        if weights_dtype is not None and t.is_floating_point() and not name.startswith("features."):
            t = t.to(weights_dtype)
        return t

    state = {k: stored(k, v) for k, v in model.state_dict().items()}
    meta = {"model_config": cfg.to_dict(), "stft": cfg.stft.to_dict(), "source_names": list(cfg.source_names)}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "chimera_version": __version__,
        **meta,
        "feature_stats": {"mean": state["features.mean"], "std": state["features.std"]},
        "state_dict": state,
        "checksum": _checksum(meta, state),
        "training_state": _cpu(training_state),
    }
    with atomic_write(path, force=True) as f:  # complete or absent, even after a kill
        torch.save(payload, f)


def _load_failure(exc: Exception) -> str:
    """torch.load's error in a few words (its messages run to paragraphs of advice)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        return "it holds Python objects besides tensors: not a chimera checkpoint, and chimera never unpickles code"
    if isinstance(exc, (pickle.UnpicklingError, KeyError)):  # the unpickler's answers to bytes it cannot read
        return "not a torch file"
    if isinstance(exc, EOFError) or not text.strip():
        return "empty or truncated"
    first = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[0]
    sentence = first.split(". ")[0].rstrip(".")
    return f"corrupt, truncated or not a torch file: {sentence[:160]}"


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(model, training_state)``; the model is in eval mode on ``map_location``
    (anything ``torch.device`` takes: a name, a device or an index; None: the CPU) and
    ``training_state`` is None when none was saved. Raises :class:`CheckpointError`
    for a missing, corrupt, truncated, foreign or incompatible file.
    """
    path = os.fspath(path)
    try:  # an index (hubconf's device=0) or a torch.load-style dict was ignored: the model stayed on the CPU
        device = None if map_location is None else torch.device(map_location)
    except TypeError:  # (an unknown device name or index: torch's RuntimeError says which)
        raise TypeError(f"load_checkpoint: map_location must be a device (a name, torch.device or index) or None, "
                        f"got {map_location!r}") from None

    def fail(why):
        return CheckpointError(f"{path}: {why}")

    if not os.path.isfile(path):
        raise fail("no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle/EOF errors differ by torch version
        raise fail(f"cannot be read as a checkpoint ({_load_failure(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise fail(f"not a chimera checkpoint (format {what!r}, expected {FORMAT!r})")
    version = payload.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise fail(f"incompatible checkpoint format version {version!r}; this chimera reads versions 1..{VERSION}")
    missing = [k for k in ("model_config", "stft", "source_names", "state_dict", "checksum") if k not in payload]
    if missing:
        raise fail(f"incomplete checkpoint, missing {missing}")
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        stft = StftConfig.from_dict(payload["stft"])
    except (TypeError, ValueError) as e:
        raise fail(f"incompatible model configuration: {e}") from e
    if stft != config.stft:
        raise fail(f"STFT config {stft} disagrees with the model config's {config.stft}")
    names = payload["source_names"]
    if not isinstance(names, (list, tuple)) or list(names) != list(config.source_names):
        raise fail(f"source names {names!r} disagree with the model config's {list(config.source_names)}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise fail("state_dict is not a mapping of names to tensors")
    meta = {"model_config": payload["model_config"], "stft": payload["stft"], "source_names": payload["source_names"]}
    try:
        intact = _checksum(meta, state) == payload["checksum"]
    except (TypeError, ValueError):  # values JSON cannot write (a set): not what save_checkpoint stores
        intact = False
    if not intact:
        raise fail("checksum mismatch: the weights or configuration are corrupt")
    try:
        with torch.device("meta"):  # shapes first: a config far larger than its weights allocates nothing
            SeparationModel(config).load_state_dict(state, strict=True, assign=True)
        model = SeparationModel(config)
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError) as e:
        raise fail(f"incompatible model configuration: {e}") from e
    except RuntimeError as e:
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise fail(f"weights do not fit the configured model: {problems[0].rstrip('.') if problems else e}{more}") from e
    if device is not None:
        model.to(device)
    model.eval()
    # Training state stays on the CPU: optimizer.load_state_dict moves it to the parameters.
    return model, payload.get("training_state")
