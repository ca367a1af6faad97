"""The data side of training: the data-set registry, loaders that turn an unreadable file into a
one-line error naming it, and the epoch order (a pure function of seed, stage, epoch and rank)."""
from __future__ import annotations

import signal
import threading

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from .. import data
from .errors import TrainError

#: ``data.dataset`` names of a recipe.
DATASETS = {"musdb18": data.MUSDB18, "dsd100": data.DSD100, "demo": data.DemoTracks, "wsj0mix": data.WSJ0Mix,
            "foldertuple": data.FolderTuple}
#: Keys of ``[data]`` that configure the loaders or one split, not the data set itself.
LOADER_KEYS = ("dataset", "batch_size", "valid_batch_size", "num_workers", "train", "valid")
#: Data-set arguments that the run sets itself, and from what (in a recipe: "got multiple values").
RUN_KEYS = {"sample_rate": "model.stft.sample_rate", "seed": "the recipe's seed",
            "train": "the table it is in, [data.train] or [data.valid]"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_of(test):
    return lambda v: isinstance(v, (list, tuple)) and all(test(x) for x in v)


def _or_none(kind):
    return kind[0], lambda v: v is None or kind[1](v)


# (what the value must be, its test); the data sets check the values themselves
_NUMBER = ("a number", _number)
_INTEGER = ("an integer", _integer)
_STRING = ("a string", lambda v: isinstance(v, str))
_PATH = ("a path (a string)", lambda v: isinstance(v, str))
_PATHS = ("a path or a list of paths", lambda v: isinstance(v, str) or _list_of(_PATH[1])(v))
_NAMES = ("a list of names (strings)", _list_of(_STRING[1]))
_NUMBERS = ("a list of numbers", _list_of(_number))
_TARGETS = ("a list of names or a table of lists of names",
            lambda v: _NAMES[1](v) or (isinstance(v, dict) and all(_NAMES[1](x) for x in v.values())))
_FOLDERS = ("a table of a path or a list of paths per source",
            lambda v: isinstance(v, dict) and all(_PATHS[1](x) for x in v.values()))
_QUALITY = ("a string or an integer", lambda v: isinstance(v, str) or _integer(v))
_COMMON = {"segment_seconds": _or_none(_NUMBER), "mono": _STRING, "gain_db": _or_none(_NUMBERS),
           "on_error": _STRING, "resample_quality": _QUALITY}
_SEGMENTS = {**_COMMON, "segments_per_track": _INTEGER, "remix": _NUMBER, "solo": _NUMBER,
             "solo_keep": _or_none(_NUMBERS), "eq_db": _NUMBER, "speed": _or_none(_NUMBERS), "mixture": _STRING,
             "tracks": _or_none(_NAMES), "exclude": _or_none(_NAMES)}
_STEMS = {**_SEGMENTS, "sources": _or_none(_NAMES), "targets": _or_none(_TARGETS), "ext": _STRING}
_MUSDB = {**_STEMS, "root": _PATHS, "split": _or_none(_STRING), "mixture_name": _or_none(_STRING)}
#: The type of each option of each data set (``data.dataset``): a value of another type failed
#: inside the data set, with Python's own words ("'<=' not supported between instances of ...").
OPTION_TYPES = {
    "musdb18": _MUSDB,
    "demo": _MUSDB,
    "dsd100": {**_STEMS, "root": _PATH, "split": _STRING},
    "wsj0mix": {**_SEGMENTS, "root": _PATH, "split": _STRING, "n_src": _INTEGER},
    "foldertuple": {**_COMMON, "folders": _FOLDERS, "epoch_length": _or_none(_INTEGER)},
}


def check_option_types(data_cfg: dict) -> None:
    """Each data-set option of a ``[data]`` table (and its ``train``/``valid`` tables) is of its
    type: else a TrainError naming it as the recipe does (``data.train.solo``) and the type."""
    types = OPTION_TYPES[data_cfg["dataset"]]
    tables = [("data", data_cfg)] + [(f"data.{s}", data_cfg[s]) for s in ("train", "valid") if s in data_cfg]
    for where, table in tables:
        for key, value in table.items():
            if where == "data" and key in LOADER_KEYS:
                continue
            if key in RUN_KEYS:
                raise TrainError(f"config: {where}.{key} is set by the run (from {RUN_KEYS[key]}), "
                                 "not in a data table")
            if key in types and not types[key][1](value):
                raise TrainError(f"config: {where}.{key} must be {types[key][0]}, got {value!r}")


#: Seed of the validation split's segment offsets, whatever the run's seed: runs with different
#: seeds are validated on the same segments, so their validation figures compare.
VALIDATION_SEED = 0


def build_dataset(data_cfg: dict, split: str, sample_rate: int, seed: int):
    """The ``split`` ("train" or "valid") data set of a validated ``[data]`` table; ``seed`` (the
    run's) draws the training items, the validation segments use :data:`VALIDATION_SEED`."""
    if split != "train":
        seed = VALIDATION_SEED
    common = {k: v for k, v in data_cfg.items() if k not in LOADER_KEYS}
    kwargs = {**common, **data_cfg.get(split, {})}
    if isinstance(kwargs.get("gain_db"), list):  # (TOML's array; a number was a traceback here)
        kwargs["gain_db"] = tuple(kwargs["gain_db"])
    cls = DATASETS[data_cfg["dataset"]]
    try:
        return cls(sample_rate=sample_rate, seed=seed, train=split == "train", **kwargs)
    except data.AudioError as e:
        raise TrainError(f"{split} data: unreadable file: {e}") from None
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise TrainError(f"{split} data ({data_cfg['dataset']}): {e}") from None


class _Guarded(Dataset):
    """Turns an AudioError into an item that the collate function reports, so the main
    process gets the one-line message (with the path) instead of a worker traceback."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except data.AudioError as e:
            return {"error": str(e)}


def _collate(items):
    for it in items:
        if "error" in it:
            return {"error": it["error"]}
    if len({it["mixture"].shape for it in items}) > 1:  # whole tracks: torch.stack raised (a worker's traceback)
        return {"lengths": True}
    return {"mixture": torch.stack([it["mixture"] for it in items]),
            "sources": torch.stack([it["sources"] for it in items]),
            "name": [it["name"] for it in items]}


def check_batch(batch: dict, what: str = "training") -> dict:
    """``batch``, or the TrainError of the unreadable file, or of the items of different
    lengths, it stands for."""
    if "error" in batch:
        raise TrainError(f"unreadable {what} data: {batch['error']}")
    if "lengths" in batch:
        size = "valid_batch_size" if what == "validation" else "batch_size"
        raise TrainError(f"{what} data: items of different lengths in one batch (whole tracks, as segment_seconds "
                         f"is unset): set segment_seconds, or data.{size} = 1")
    return batch


def loader(dataset, batch_size: int, num_workers: int, indices=None) -> DataLoader:
    """Batches of ``dataset`` (items ``indices`` in that order, default all), unshuffled. A
    seeded data set draws the same with any number of workers; one with ``seed = None`` draws
    afresh each epoch (from torch's global generator, so ``torch.manual_seed`` repeats them)."""
    ds = _Guarded(dataset)
    if indices is not None:
        ds = Subset(ds, indices)
    # Own generator: creating an iterator must not draw from the global RNG (exact resume). It
    # seeds the workers' generators alike every epoch, so a data set without a seed (which draws
    # from them) repeated its draws each epoch: its workers are seeded from the global RNG
    # instead, torch's default (without workers such a data set draws from that RNG itself).
    unseeded = num_workers > 0 and getattr(dataset, "seed", None) is None
    return _Loader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate,
                   generator=None if unseeded else torch.Generator().manual_seed(0),
                   worker_init_fn=_leave_ctrl_c_to_the_main_process)


class _Loader(DataLoader):
    """A DataLoader whose workers leave Ctrl-C to the main process. It reaches the whole
    process group: a worker that exited on it made the main process raise "DataLoader worker
    exited unexpectedly" (a traceback, exit 1) before its own KeyboardInterrupt. The main
    process stops the workers when it unwinds."""

    def __iter__(self):
        if (self.num_workers == 0 or not hasattr(signal, "pthread_sigmask")
                or threading.current_thread() is not threading.main_thread()):
            return super().__iter__()
        # Ctrl-C while the workers start: noted, and raised once they are (raised inside,
        # it left a half-built iterator that printed an AttributeError when collected). It
        # is blocked too, so that the workers inherit it blocked until their init ignores it
        # (one caught in fork's own handlers was lost, or printed).
        caught = []
        handler = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            batches = super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)
        if caught:
            raise KeyboardInterrupt
        return batches


def _leave_ctrl_c_to_the_main_process(worker_id):
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def epoch_key(stage: int, epoch: int) -> int:
    """One number per (stage, epoch), for the data order and the data sets' draws:
    epoch + 1000·stage, as recipes have always drawn; from a stage's 1000th epoch on (where
    that met the next stage's first epochs, repeating their draws) numbers above all those,
    distinct in their low 32 bits (all of a seed torch's generator keeps) for stages below
    128 and epochs below 2²⁴."""
    if epoch < 1000:
        return epoch + 1000 * stage
    return 2**31 + (stage << 24) + epoch


def epoch_indices(n: int, seed: int, stage: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's item order for an epoch: a pure function of its arguments."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch_key(stage, epoch))  # (it seeds its shuffle with seed + epoch)
    return list(sampler)
