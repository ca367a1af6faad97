"""``chimera.losses``: the public name of the deep-clustering losses and their targets (README,
user code). A re-export only: the code lives in :mod:`chimera.objectives` (``dc.py``, ``targets.py``),
which also holds the mask-inference and waveform objectives."""
from .objectives.dc import WHITENING_RIDGE, deep_clustering_loss, whitened_kmeans_loss
from .objectives.targets import ideal_binary_labels, magnitude_ratio_weights, voice_activity_weights

__all__ = ["WHITENING_RIDGE", "deep_clustering_loss", "ideal_binary_labels", "magnitude_ratio_weights",
           "voice_activity_weights", "whitened_kmeans_loss"]
