"""Dataclass configurations of the separation models.

Both configs round-trip through plain dicts of primitives (``to_dict``/``from_dict``)
so that checkpoints can be read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import torch

WINDOWS = ("hann", "hamming", "blackman", "rectangular", "sqrt_hann")
EMBEDDING_ACTIVATIONS = ("tanh", "sigmoid")
MASK_KINDS = ("sigmoid", "softmax", "doubled_sigmoid", "clipped_relu", "magbook", "phasebook", "combook")
COMPLEX_MASK_KINDS = ("phasebook", "combook")
MASK_INPUTS = ("trunk", "embedding")


def _from_dict(cls, data, what):
    if not isinstance(data, dict):
        raise TypeError(f"{what}: expected a dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known: {sorted(names)}")
    return cls(**data)


# The checks below also normalise: a NumPy integer or float kept in a config would be pickled
# into the checkpoint as a NumPy object, which torch.load(weights_only=True) refuses to read.
def _int(what, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{what} must be >= {low}, got {value}")
    return int(value)


def _real(what, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _source_name(name):
    # Source names become output file names ({stem}): a path or an empty name would write elsewhere.
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"ModelConfig: source name {name!r} must be a non-empty file name (no '/' or '\\'; not '.' or '..')")
    return name


#: The ``mask_options`` each mask head takes (the real heads take none).
MASK_OPTIONS = {"magbook": ("magbook",), "phasebook": ("n_phases", "magbook"), "combook": ("n_entries",)}


def _mask_options(mask, options):
    if not isinstance(options, dict):
        raise TypeError(f"ModelConfig: mask_options must be a dict, got {options!r}")
    known = MASK_OPTIONS.get(mask, ())
    unknown = sorted(map(str, set(options) - set(known)))
    if unknown:
        raise ValueError(f"ModelConfig: mask {mask!r} takes the options {list(known)}, got unknown {unknown}")
    out = dict(options)
    for key in ("n_phases", "n_entries"):
        if key in out:
            out[key] = _int(f"ModelConfig: mask_options {key}", out[key], 1)
    if "magbook" in out:
        book = out["magbook"]
        if isinstance(book, (str, bytes)) or not hasattr(book, "__len__") or len(book) == 0:
            raise ValueError(f"ModelConfig: mask_options magbook must be a non-empty list of numbers, got {book!r}")
        out["magbook"] = tuple(_real("ModelConfig: mask_options magbook entry", v) for v in book)
    return out


@dataclass
class StftConfig:
    """Short-time Fourier transform used by the model (and needed to invert its outputs)."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 64
    window: str = "hann"

    def __post_init__(self):
        self.sample_rate = _int("StftConfig: sample_rate", self.sample_rate, 1)
        self.n_fft = _int("StftConfig: n_fft", self.n_fft, 2)
        self.hop_length = _int("StftConfig: hop_length", self.hop_length, 1)
        # Centred frames further apart than n_fft/2 leave the end of the signal outside every
        # frame (and hann/blackman windows have no inverse there): at least half overlap.
        if self.hop_length > self.n_fft // 2:
            raise ValueError(f"StftConfig: hop_length must be in [1, n_fft // 2 = {self.n_fft // 2}] "
                             f"(frames overlapping by half at least), got {self.hop_length}")
        if not isinstance(self.window, str) or self.window not in WINDOWS:
            raise ValueError(f"StftConfig: unknown window {self.window!r}; choose one of {WINDOWS}")

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def window_tensor(self, device=None, dtype=None):
        if torch.empty(0, device=device).is_meta:
            # Shapes only (a model built on "meta" to check a checkpoint): the window
            # functions on meta would import torch._dynamo (1.1 s, 70 MB) for values unused.
            return torch.empty(self.n_fft, device=device, dtype=dtype)
        kw = dict(periodic=True, device=device, dtype=dtype)
        if self.window == "hann":
            return torch.hann_window(self.n_fft, **kw)
        if self.window == "sqrt_hann":
            return torch.hann_window(self.n_fft, **kw).sqrt()
        if self.window == "hamming":
            return torch.hamming_window(self.n_fft, **kw)
        if self.window == "blackman":
            return torch.blackman_window(self.n_fft, **kw)
        return torch.ones(self.n_fft, device=device, dtype=dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StftConfig":
        return _from_dict(cls, data, "StftConfig")


@dataclass
class ModelConfig:
    """Architecture of a :class:`~chimera.models.SeparationModel`.

    ``embedding_dim = 0`` drops the deep-clustering head, ``mask = None`` drops the
    mask-inference head (at least one is needed). ``mask_input`` chooses what the mask
    head reads: the BLSTM output (Chimera++) or the embeddings (original Chimera).
    ``mask_options`` go to the codebook heads (:func:`~chimera.models.make_mask_head`):
    ``magbook`` for magbook/phasebook (e.g. ``{"magbook": [0, 1, 2]}``), ``n_phases`` for
    phasebook (e.g. ``{"n_phases": 8}``), ``n_entries`` for combook (e.g. ``{"n_entries": 12}``).
    """

    n_sources: int = 2
    source_names: tuple = ()
    stft: StftConfig = field(default_factory=StftConfig)
    # features
    floor_db: float = -80.0  # log-magnitude floor relative to the loudest bin of the utterance
    # trunk
    layers: int = 4
    hidden: int = 600
    dropout: float = 0.3
    residual: bool = False
    # heads
    embedding_dim: int = 20
    embedding_activation: str = "tanh"
    mask: str | None = "sigmoid"
    mask_input: str = "trunk"
    mask_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.stft, dict):
            self.stft = StftConfig.from_dict(self.stft)
        if not isinstance(self.stft, StftConfig):
            raise TypeError(f"ModelConfig: stft must be a StftConfig or a dict, got {self.stft!r}")
        self.n_sources = _int("ModelConfig: n_sources", self.n_sources, 1)
        if isinstance(self.source_names, (str, bytes)) or not hasattr(self.source_names, "__iter__"):
            raise TypeError(f"ModelConfig: source_names must be a list of names, got {self.source_names!r}")
        self.source_names = tuple(self.source_names) or tuple(f"source{i}" for i in range(self.n_sources))
        if len(self.source_names) != self.n_sources:
            raise ValueError(
                f"ModelConfig: {len(self.source_names)} source names {self.source_names} "
                f"for n_sources={self.n_sources}")
        self.source_names = tuple(_source_name(n) for n in self.source_names)
        if len(set(self.source_names)) != self.n_sources:
            raise ValueError(f"ModelConfig: source names must differ (each names an output file), got {self.source_names}")
        self.layers = _int("ModelConfig: layers", self.layers, 1)
        self.hidden = _int("ModelConfig: hidden", self.hidden, 1)
        self.dropout = _real("ModelConfig: dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig: dropout must be in [0, 1), got {self.dropout}")
        self.floor_db = _real("ModelConfig: floor_db", self.floor_db)
        if self.floor_db >= 0:
            raise ValueError(f"ModelConfig: floor_db must be negative (dB below the loudest bin), got {self.floor_db}")
        if not isinstance(self.residual, bool):
            raise TypeError(f"ModelConfig: residual must be true or false, got {self.residual!r}")
        self.embedding_dim = _int("ModelConfig: embedding_dim", self.embedding_dim, 0)
        if self.embedding_activation not in EMBEDDING_ACTIVATIONS:
            raise ValueError(
                f"ModelConfig: embedding_activation {self.embedding_activation!r} not in {EMBEDDING_ACTIVATIONS}")
        if self.mask is not None and self.mask not in MASK_KINDS:
            raise ValueError(f"ModelConfig: unknown mask {self.mask!r}; choose one of {MASK_KINDS} or None")
        self.mask_options = _mask_options(self.mask, self.mask_options)
        if self.mask_input not in MASK_INPUTS:
            raise ValueError(f"ModelConfig: mask_input {self.mask_input!r} not in {MASK_INPUTS}")
        if self.mask is None and self.embedding_dim == 0:
            raise ValueError("ModelConfig: the model needs an embedding head (embedding_dim > 0) or a mask head")
        if self.mask is not None and self.mask_input == "embedding" and self.embedding_dim == 0:
            raise ValueError("ModelConfig: mask_input='embedding' needs an embedding head (embedding_dim > 0)")

    @property
    def complex_mask(self) -> bool:
        return self.mask in COMPLEX_MASK_KINDS

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stft"] = self.stft.to_dict()
        d["source_names"] = list(self.source_names)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):  # dict() of it: "'int' object is not iterable", or a list of pairs taken
            raise TypeError(f"ModelConfig: expected a dict, got {type(data).__name__}")
        data = dict(data)
        if "stft" in data:
            data["stft"] = StftConfig.from_dict(data["stft"])
        return _from_dict(cls, data, "ModelConfig")
