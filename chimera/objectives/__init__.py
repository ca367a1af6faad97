"""Training objectives of the deep clustering family, and the SI-SDR metric.

- :mod:`.dc`: the deep-clustering losses DC and DC-W, from the fused ``affinity_stats`` op;
- :mod:`.mi`: mask-inference losses MI-MSA, MI-tPSA, CSA;
- :mod:`.wave`: waveform losses WA, WA-MISI-K and negative SI-SDR after the iSTFT;
- :mod:`.metrics`: SI-SDR (metric and loss) and permutation-invariant matching (PIT);
- :mod:`.targets`: ideal binary labels and time-frequency weights (inference uses them too);
- :mod:`.objective`: :func:`objective`, the named objectives (and their options) of the recipes.

:mod:`chimera.losses` is the same public API under its historical name.
"""
from ._common import REDUCTIONS
from .dc import WHITENING_RIDGE, deep_clustering_loss, whitened_kmeans_loss
from .metrics import NORMS, permute_sources, pit, pit_from_matrix, si_sdr, si_sdr_loss
from .mi import csa_loss, msa_loss, tpsa_loss, tpsa_target
from .objective import MI_NAMES, OBJECTIVES, OPTIONS, Objective, objective
from .targets import DC_WEIGHTS, dc_targets, ideal_binary_labels, magnitude_ratio_weights, voice_activity_weights
from .wave import wa_loss, wa_misi_loss, wave_si_sdr_loss

__all__ = [
    "DC_WEIGHTS", "MI_NAMES", "NORMS", "OBJECTIVES", "OPTIONS", "Objective", "REDUCTIONS", "WHITENING_RIDGE",
    "csa_loss", "dc_targets", "deep_clustering_loss", "ideal_binary_labels", "magnitude_ratio_weights",
    "msa_loss", "objective", "permute_sources", "pit", "pit_from_matrix", "si_sdr", "si_sdr_loss", "tpsa_loss",
    "tpsa_target", "voice_activity_weights", "wa_loss", "wa_misi_loss", "wave_si_sdr_loss",
    "whitened_kmeans_loss",
]
