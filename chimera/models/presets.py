"""Named model configurations of the deep clustering family.

``size="paper"``: 4 BLSTM layers × 600 units per direction, D = 20 embedding dimensions,
dropout 0.3 (Isik et al. 2016; Wang et al. 2018). ``size="small"``: 2 × 64, D = 20, no
dropout — trains on a CPU in seconds for tests and demos.
"""
from __future__ import annotations

import dataclasses

from .config import ModelConfig, StftConfig

SIZES = {
    "small": dict(layers=2, hidden=64, dropout=0.0, embedding_dim=20),
    "paper": dict(layers=4, hidden=600, dropout=0.3, embedding_dim=20),
}


def _dc():
    """Deep clustering: embedding head only, separation by k-means.

    J. R. Hershey, Z. Chen, J. Le Roux, S. Watanabe, "Deep clustering: Discriminative
    embeddings for segmentation and separation", ICASSP 2016."""
    return dict(mask=None, embedding_activation="tanh")


def _chimera():
    """Chimera: DC embedding head plus a mask-inference head that reads the embeddings.

    Y. Luo, Z. Chen, J. R. Hershey, J. Le Roux, N. Mesgarani, "Deep clustering and
    conventional networks for music separation: Stronger together", ICASSP 2017."""
    return dict(mask="softmax", mask_input="embedding", embedding_activation="tanh")


def _chimerapp():
    """Chimera++: mask head on the BLSTM output (not the embeddings), trained with
    α·DC + (1−α)·MI (α = 0.975) and tPSA/WA objectives; doubled-sigmoid masks reach the
    truncated phase-sensitive targets in [0, 2].

    Z.-Q. Wang, J. Le Roux, J. R. Hershey, "Alternative objective functions for deep
    clustering", ICASSP 2018."""
    return dict(mask="doubled_sigmoid", mask_input="trunk", embedding_activation="sigmoid")


def _chimerapp_phasebook():
    """Chimera++ whose mask head is a phasebook (phase from a discrete codebook, magnitude
    from a magbook), giving complex masks.

    J. Le Roux, G. Wichern, S. Watanabe, A. Sarroff, J. R. Hershey, "Phasebook and friends:
    Leveraging discrete representations for source separation", IEEE JSTSP 13(2), 2019."""
    return dict(mask="phasebook", mask_input="trunk", embedding_activation="sigmoid")


def _chimerapp_combook():
    """Chimera++ with a combook head: complex masks from one codebook of complex values.

    Le Roux et al., "Phasebook and friends", IEEE JSTSP 13(2), 2019."""
    return dict(mask="combook", mask_input="trunk", embedding_activation="sigmoid")


PRESETS = {
    "dc": _dc,
    "chimera": _chimera,
    "chimerapp": _chimerapp,
    "chimerapp-phasebook": _chimerapp_phasebook,
    "chimerapp-combook": _chimerapp_combook,
}


def preset(name: str, size: str = "small", **overrides) -> ModelConfig:
    """:class:`ModelConfig` of a named architecture.

    ``overrides`` replace any ``ModelConfig`` field (``stft`` may be a :class:`StftConfig`
    or a dict), e.g. ``preset("chimerapp", "paper", n_sources=4, source_names=[...])``.
    """
    if name not in PRESETS:
        raise ValueError(f"preset: unknown model {name!r}; choose one of {sorted(PRESETS)}")
    if size not in SIZES:
        raise ValueError(f"preset: unknown size {size!r}; choose one of {sorted(SIZES)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"preset: unknown override(s) {unknown}; ModelConfig fields are {sorted(fields)}")
    kwargs = {**SIZES[size], **PRESETS[name](), **overrides}
    if isinstance(kwargs.get("stft"), dict):
        kwargs["stft"] = StftConfig.from_dict(kwargs["stft"])
    return ModelConfig(**kwargs)
