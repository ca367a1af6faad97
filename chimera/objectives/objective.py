"""The objectives the trainer uses, by name.

:func:`objective` builds a callable ``(output, mixture, sources) -> scalar loss`` where ``output``
is a :class:`chimera.models.ModelOutput` and ``mixture`` ``(B, L)`` / ``sources`` ``(B, C, L)``
are waveforms. Every name, its options and their defaults are declared once, in :data:`OPTIONS`,
and every option's check once, in :data:`CHECKS`; :func:`objective` applies both.
"""
from __future__ import annotations

import functools
import math
import numbers

from .. import signal
from ._common import check_choice
from .dc import deep_clustering_loss, deep_lda_loss, whitened_kmeans_loss
from .metrics import NORMS
from .mi import csa_loss, msa_loss, tpsa_loss
from .targets import DC_WEIGHTS, dc_targets
from .wave import wa_loss, wa_misi_loss, wave_si_sdr_loss


class Batch:
    """One batch as the objectives see it. The source spectrograms are computed on first use
    and then shared, so the DC and MI terms of the Chimera objective take one STFT of the sources."""

    def __init__(self, output, mixture, sources):
        self.output, self.mixture, self.sources = output, mixture, sources

    @functools.cached_property
    def source_specs(self):
        if self.sources.dim() != 3:
            raise ValueError(f"objective: sources must be waveforms (B, C, L), got {tuple(self.sources.shape)}")
        st = self.output.stft
        window = st.window_tensor(self.sources.device, self.sources.dtype)
        return signal.stft(self.sources, st.n_fft, st.hop_length, window, center=True)


def _dc_term(loss):
    """A deep-clustering objective on ideal-binary labels (class indices: no one-hot)."""
    def term(b: Batch, o: dict):
        labels, weight = dc_targets(b.output.mixture_spec, b.source_specs, o["weights"])
        if weight is not None:
            weight = weight.to(b.output.embedding.dtype)
        return loss(b.output.embedding, labels, weight, num_classes=b.source_specs.shape[1])
    return term


#: The loss of each deep-clustering (embedding head) and mask-inference (mask head) objective,
#: given a :class:`Batch` and the objective's options: "dc" the classic affinity loss (Hershey
#: 2016), "dcw" the whitened k-means loss (DC-W) and "dclda" the deep-LDA loss (both Wang,
#: Le Roux & Hershey 2018; deep LDA is the DC term torch-chimera trains with).
DC_LOSSES = {"dc": _dc_term(deep_clustering_loss), "dcw": _dc_term(whitened_kmeans_loss),
             "dclda": _dc_term(deep_lda_loss)}
MI_LOSSES = {
    "msa": lambda b, o: msa_loss(b.output.masks, b.output.mixture_spec, b.source_specs, norm=o["norm"],
                                 pit=o["pit"]),
    "tpsa": lambda b, o: tpsa_loss(b.output.masks, b.output.mixture_spec, b.source_specs, gamma=o["gamma"],
                                   norm=o["norm"], pit=o["pit"]),
    "csa": lambda b, o: csa_loss(b.output.masks, b.output.mixture_spec, b.source_specs, norm=o["norm"],
                                 pit=o["pit"]),
    "wa": lambda b, o: wa_loss(b.output.estimates, b.sources, b.output.stft, pit=o["pit"]),
    "wa-misi": lambda b, o: wa_misi_loss(b.output.estimates, b.mixture, b.sources, b.output.stft, o["misi_iters"],
                                         pit=o["pit"]),
    "si-sdr": lambda b, o: wave_si_sdr_loss(b.output.estimates, b.sources, b.output.stft, o["eps"], pit=o["pit"]),
}
DC_NAMES, MI_NAMES = tuple(DC_LOSSES), tuple(MI_LOSSES)

#: Each objective's options with their defaults; "chimera" passes any other option to its MI loss.
OPTIONS = {
    "dc": {"weights": None},
    "dcw": {"weights": "mr"},  # magnitude-ratio weights, as Chimera++ uses them
    "dclda": {"weights": "mr"},  # as torch-chimera weights its deep-LDA term
    "msa": {"pit": False, "norm": "l1"},
    "tpsa": {"pit": False, "norm": "l1", "gamma": 2.0},
    "csa": {"pit": False, "norm": "l1"},
    "wa": {"pit": False},
    "wa-misi": {"pit": False, "misi_iters": 5},
    "si-sdr": {"pit": False, "eps": 1e-8},
    # alpha 0.975: Chimera++ (the torch-chimera recipe uses 0.95); dc_weights "default": those of `dc`
    "chimera": {"alpha": 0.975, "mi": "tpsa", "dc": "dcw", "dc_weights": "default"},
}
OBJECTIVES = tuple(OPTIONS)


def _requires(test, requirement):
    def check(what, value):
        if not test(value):
            raise ValueError(f"{what} must be {requirement}, got {value!r}")
    return check


def _one_of(choices):
    return lambda what, value: check_choice(what, value, choices)


def _number(v):
    # a bool is an int to Python, a string from a config compares by a TypeError
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


#: How each option's value is checked (options not named here take any value).
CHECKS = {
    "weights": _one_of(tuple(DC_WEIGHTS)),
    "norm": _one_of(NORMS),
    "pit": _requires(lambda v: isinstance(v, bool), "true or false"),  # "no" would turn PIT on
    "gamma": _requires(lambda v: _number(v) and v > 0, "a positive number"),
    "misi_iters": _requires(lambda v: _number(v) and isinstance(v, numbers.Integral) and v >= 0, "an integer >= 0"),
    "eps": _requires(lambda v: _number(v) and 0 <= v < math.inf, "a finite number >= 0"),  # < 0: log of a negative
    "alpha": _requires(lambda v: _number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "mi": _one_of(MI_NAMES),
    "dc": _one_of(DC_NAMES),
    "dc_weights": _one_of(("default", *DC_WEIGHTS)),
}


def _resolve(name: str, given: dict) -> dict:
    """The options of objective ``name``: its defaults updated with ``given``, all checked."""
    table = OPTIONS[name]
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise ValueError(f"objective {name!r}: unknown option(s) {unknown}; it takes {list(table)}")
    options = {k: given.get(k, default) for k, default in table.items()}
    for k, value in options.items():
        if k in CHECKS:
            CHECKS[k](f"objective {name!r}: {k}", value)
    return options


def _check_batch(output, mixture, sources):
    """Sources that do not line up with the mixture the model saw: a shorter one still fits
    the same number of frames (or is broadcast by SI-SDR), so every loss but one ran on it."""
    B, L = output.mixture_spec.shape[0], output.length
    if sources.dim() != 3 or sources.shape[0] != B or sources.shape[-1] != L:
        raise ValueError(f"objective: sources must be waveforms (B, C, L) = ({B}, C, {L}) like the mixture, "
                         f"got {tuple(sources.shape)}")
    if tuple(mixture.shape) != (B, L):
        raise ValueError(f"objective: the mixture must be the ({B}, {L}) waveform the model separated, "
                         f"got {tuple(mixture.shape)}")


class Objective:
    """``(output, mixture, sources) -> scalar loss``; see :func:`objective`."""

    def __init__(self, name: str, options: dict):
        self.name, self.options = name, options

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"objective({self.name!r}{', ' if opts else ''}{opts})"

    def __call__(self, output, mixture, sources):
        _check_batch(output, mixture, sources)
        return self.loss(Batch(output, mixture, sources))

    def loss(self, batch: Batch):
        raise NotImplementedError

    def _need(self, output, what):
        if getattr(output, what) is None:
            head = "embedding (DC) head" if what == "embedding" else "mask head"
            raise ValueError(f"objective {self.name!r} needs a model with a {head}")


class _DC(Objective):
    def __init__(self, name, **options):
        super().__init__(name, _resolve(name, options))
        self.weights = self.options["weights"]

    def loss(self, batch):
        self._need(batch.output, "embedding")
        return DC_LOSSES[self.name](batch, self.options)


class _MI(Objective):
    def __init__(self, name, **options):
        super().__init__(name, _resolve(name, options))

    def loss(self, batch):
        self._need(batch.output, "masks")
        have, given = batch.output.masks.shape[1], batch.sources.shape[1]
        if have != given:
            raise ValueError(f"objective {self.name!r}: the model gives {have} sources, the batch holds {given}")
        return MI_LOSSES[self.name](batch, self.options)


class _Chimera(Objective):
    def __init__(self, name, **options):
        own = _resolve(name, {k: v for k, v in options.items() if k in OPTIONS[name]})
        dc_options = {} if own["dc_weights"] == "default" else {"weights": own["dc_weights"]}
        self.dc = objective(own["dc"], **dc_options)
        self.mi = objective(own["mi"], **{k: v for k, v in options.items() if k not in OPTIONS[name]})
        super().__init__(name, {**own, "dc_weights": self.dc.weights, **self.mi.options})
        self.alpha = own["alpha"]
        self.last = {}  # detached DC and MI terms of the latest call, for logging

    def loss(self, batch):
        a = self.alpha
        loss, self.last = 0.0, {}
        if a > 0:
            dc = self.dc.loss(batch)
            loss, self.last["dc"] = loss + a * dc, dc.detach()
        if a < 1:
            mi = self.mi.loss(batch)
            loss, self.last["mi"] = loss + (1 - a) * mi, mi.detach()
        return loss


_KINDS = {**dict.fromkeys(DC_NAMES, _DC), **dict.fromkeys(MI_NAMES, _MI), "chimera": _Chimera}


def objective(name: str, **options) -> Objective:
    """Loss callable ``(output, mixture waveform (B, L), source waveforms (B, C, L)) -> scalar``.

    - ``"dc"``, the classic deep-clustering loss (no weights by default; ``weights="mr"`` for
      magnitude-ratio, ``"va"`` for voice-activity weights), and ``"dcw"``, the whitened
      k-means loss DC-W (magnitude-ratio weights by default), and ``"dclda"``, the deep-LDA loss
      (within- over total-class scatter, magnitude-ratio weights by default): all on ideal
      binary labels.
    - ``"msa"``, ``"tpsa"`` (``gamma=2.0``), ``"csa"``: MI losses, ``norm="l1"|"l2"``.
    - ``"wa"``; ``"wa-misi"`` (``misi_iters=5``); ``"si-sdr"`` (negative SI-SDR after iSTFT).
    - ``"chimera"``: ``alpha``·DC + (1 − ``alpha``)·MI with ``alpha=0.975`` (Chimera++; the
      torch-chimera recipe uses 0.95), ``mi="tpsa"``, ``dc="dcw"`` (DC-W, as in Chimera++; ``dc_weights`` overrides its
      weights); other options go to the MI loss. Its ``last`` dict holds the latest DC and MI terms.

    MI losses take ``pit=True`` for permutation-invariant training (default: fixed order).
    """
    if name not in _KINDS:
        raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    return _KINDS[name](name, **options)
