"""Recipes: load (TOML, or YAML with PyYAML), override from the command line, validate.

Every key a recipe may hold is declared once here (``TOP_KEYS``, ``TRAIN_DEFAULTS``, ``STAGE_KEYS``,
the choices ``SCHEDULERS`` and ``AMP_MODES``; data sets in :data:`.data.DATASETS`, the types of their
options in :data:`.data.OPTION_TYPES`, objectives in :data:`chimera.objectives.OPTIONS`) and checked
once, by :func:`validate_config`.
"""
from __future__ import annotations

import copy
import datetime
import math
import re
import sys
from pathlib import Path

from ..objectives import OPTIONS, objective
from .data import DATASETS, check_option_types
from .distrib import DEVICES
from .errors import TrainError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

SCHEDULERS = ("plateau", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")  # auto: bf16 if supported, else fp16, on CUDA only
TRAIN_DEFAULTS = {
    "grad_clip": 5.0,  # max global gradient norm; 0 disables
    "weight_decay": 0.0,
    "scheduler": "plateau",  # one of SCHEDULERS
    "plateau_factor": 0.5,  # in (0, 1]; 1 keeps the rate
    # PyTorch's ReduceLROnPlateau patience: the rate drops once plateau_patience + 1
    # validations in a row have not bettered the best validation loss
    "plateau_patience": 2,
    "min_lr_ratio": 0.01,  # cosine: final lr = lr * min_lr_ratio
    "checkpoint_every": 0,  # also write last.pt every N optimiser steps (0: only at epoch ends)
    "stats_batches": 4,  # training batches used to fit the feature statistics
    "amp": "auto",  # one of AMP_MODES
    # auto | cpu | cuda | cuda:N; under torchrun auto/cuda mean each process's LOCAL_RANK GPU
    # (cuda:N is refused there: every rank would take GPU N)
    "device": "auto",
    # validation SI-SDR with the best permutation; None: when a stage's objective uses PIT or the
    # model has no mask head (one choice for all stages, whose scores best.pt compares)
    "pit_metric": None,
    "max_steps_per_epoch": 0,  # 0: the whole epoch
    "valid_every": 1,  # validate every N epochs (and always at the end of a stage)
    "init": None,  # start from this checkpoint's weights (and statistics) instead of a fresh model
    "threads": 0,  # torch CPU threads (0: torch's default); --threads overrides
    # PyTorch's oneDNN CPU kernels in training steps (the LSTM's among them); false: its
    # native ones, whose LSTM backward is 1.6x faster for a 1025-bin input (recipes/fullband.toml)
    "mkldnn": True,
}
MAX_SEED = 2**62
STAGE_KEYS = ("name", "objective", "options", "alpha", "epochs", "lr", "grad_clip", "scheduler")
TOP_KEYS = ("seed", "model", "data", "train", "stages")


def load_config(path) -> dict:
    """A recipe from TOML (``.toml``) or, when PyYAML is installed, YAML (``.yaml``/``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such config file")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _load_yaml(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise TrainError(f"{path}: not valid TOML: {e}") from None


def _load_yaml(path: Path) -> dict:
    try:
        import yaml  # optional: only YAML recipes need PyYAML
    except ImportError:
        raise TrainError(f"{path}: YAML recipes need PyYAML (pip install pyyaml), or use TOML") from None
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TrainError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise TrainError(f"{path}: a recipe must be a mapping, got {type(config).__name__}")
    return config


def _parse_value(text: str):
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings need no quotes on the command line
    # TOML reads 2026-12-07 as a date, which no setting is (and config.json cannot hold): the text
    return text if isinstance(value, (datetime.date, datetime.time)) else value


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


# [train] numbers: key -> (integer?, lowest, highest, lowest allowed itself?)
_TRAIN_NUMBERS = {
    "grad_clip": (False, 0.0, None, True),
    "weight_decay": (False, 0.0, None, True),
    "plateau_factor": (False, 0.0, 1.0, False),
    "plateau_patience": (True, 0, None, True),
    "min_lr_ratio": (False, 0.0, 1.0, True),
    "checkpoint_every": (True, 0, None, True),
    "stats_batches": (True, 1, None, True),
    "max_steps_per_epoch": (True, 0, None, True),
    "valid_every": (True, 1, None, True),
    "threads": (True, 0, None, True),
}


def _check_number(where: str, value, integer: bool, low, high=None, low_ok: bool = True) -> None:
    """A finite number (an integer if ``integer``; booleans are not numbers here) within
    [low, high] (or (low, high] when not ``low_ok``)."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_ok else value > low) and (high is None or value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = f"{'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise TrainError(f"config: {where} must be {kind} {bounds}, got {value!r}")


def _check_choice(where: str, value, choices) -> None:
    if value not in choices:
        raise TrainError(f"config: {where} must be one of {choices}, got {value!r}")


def _no_unknown_keys(table: dict, known, what: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise TrainError(f"config: {what} {unknown}; known: {list(known)}")


def validate_config(config: dict) -> dict:
    """Fill defaults and check names; returns a normalised deep copy."""
    cfg = copy.deepcopy(config)
    _no_unknown_keys(cfg, TOP_KEYS, "unknown top-level key(s)")
    cfg.setdefault("seed", 0)
    # numpy's generators refuse a negative seed, torch's one past 64 bits (a traceback at the
    # start of the run); room is left for the per-stage and per-epoch offsets added to it
    _check_number("seed", cfg["seed"], True, 0, MAX_SEED)
    model = cfg.setdefault("model", {})
    if isinstance(model, dict):
        model.setdefault("preset", "chimerapp")
        model.setdefault("size", "small")
    data = cfg.get("data")
    if not isinstance(data, dict) or "dataset" not in data:
        raise TrainError("config: a [data] table with a `dataset` is required")
    if not isinstance(data["dataset"], str) or data["dataset"] not in DATASETS:  # (a list: unhashable)
        raise TrainError(f"config: unknown data.dataset {data['dataset']!r}; choose one of {sorted(DATASETS)}")
    data.setdefault("batch_size", 8)
    data.setdefault("num_workers", 0)
    _check_number("data.batch_size", data["batch_size"], True, 1)
    _check_number("data.num_workers", data["num_workers"], True, 0)
    if "valid_batch_size" in data:  # (else the DataLoader of the first validation refused it, an epoch in)
        _check_number("data.valid_batch_size", data["valid_batch_size"], True, 1)
    for split in ("train", "valid"):
        if not isinstance(data.setdefault(split, {}), dict):
            raise TrainError(f"config: data.{split} must be a table of the {split} set's options, "
                             f"got {data[split]!r}")
    check_option_types(data)
    if not isinstance(model, dict):
        raise TrainError(f"config: model must be a table, got {model!r}")
    if not isinstance(model.get("stft", {}), dict):
        raise TrainError(f"config: model.stft must be a table, got {model['stft']!r}")
    if "sample_rate" in model.get("stft", {}):  # (the data sets' rate: int() of it was a traceback)
        _check_number("model.stft.sample_rate", model["stft"]["sample_rate"], True, 1)
    train = cfg.setdefault("train", {})
    if not isinstance(train, dict):
        raise TrainError(f"config: train must be a table, got {train!r}")
    _no_unknown_keys(train, sorted(TRAIN_DEFAULTS), "unknown [train] key(s)")
    for k, v in TRAIN_DEFAULTS.items():
        train.setdefault(k, v)
    _check_choice("train.scheduler", train["scheduler"], SCHEDULERS)
    _check_choice("train.amp", train["amp"], AMP_MODES)
    for key, (integer, low, high, low_ok) in _TRAIN_NUMBERS.items():
        _check_number(f"train.{key}", train[key], integer, low, high, low_ok)
    if not isinstance(train["mkldnn"], bool):
        raise TrainError(f"config: train.mkldnn must be true or false, got {train['mkldnn']!r}")
    if train["pit_metric"] is not None and not isinstance(train["pit_metric"], bool):
        raise TrainError(f"config: train.pit_metric must be true, false or absent, got {train['pit_metric']!r}")
    if train["init"] is not None and not isinstance(train["init"], str):
        raise TrainError(f"config: train.init must be a checkpoint's path, got {train['init']!r}")
    if not isinstance(train["device"], str) or not re.fullmatch(DEVICES, train["device"]):
        raise TrainError(f"config: train.device must be auto, cpu, cuda or cuda:N, got {train['device']!r}")
    stages = cfg.get("stages")
    if not isinstance(stages, list) or not stages:
        raise TrainError("config: at least one [[stages]] table is required")
    for i, st in enumerate(stages):
        _validate_stage(i, st)
    return cfg


def _validate_stage(i: int, st) -> None:
    if not isinstance(st, dict):
        raise TrainError(f"config: stages.{i} must be a table")
    _no_unknown_keys(st, STAGE_KEYS, f"stages.{i}: unknown key(s)")
    for need in ("objective", "epochs", "lr"):
        if need not in st:
            raise TrainError(f"config: stages.{i} needs `{need}`")
    if not isinstance(st["objective"], str):
        raise TrainError(f"config: stages.{i}.objective must be the name of one of {sorted(OPTIONS)}, "
                         f"got {st['objective']!r}")
    _check_number(f"stages.{i}.epochs", st["epochs"], True, 0)
    _check_number(f"stages.{i}.lr", st["lr"], False, 0, low_ok=False)
    if "grad_clip" in st:
        _check_number(f"stages.{i}.grad_clip", st["grad_clip"], False, 0)
    if "scheduler" in st:
        _check_choice(f"stages.{i}.scheduler", st["scheduler"], SCHEDULERS)
    if not isinstance(st.setdefault("name", f"{i}-{st['objective']}"), str):  # (a date: config.json failed)
        raise TrainError(f"config: stages.{i}.name must be a string, got {st['name']!r}")
    if not isinstance(st.setdefault("options", {}), dict):
        raise TrainError(f"config: stages.{i}.options must be a table of the objective's options, "
                         f"got {st['options']!r}")
    if "alpha" in st:
        st["options"]["alpha"] = st.pop("alpha")
    try:
        objective(st["objective"], **st["options"])
    except (ValueError, TypeError) as e:
        raise TrainError(f"config: stages.{i}: {e}") from None
