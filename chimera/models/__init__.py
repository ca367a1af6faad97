"""Models of the deep clustering family: DC, Chimera, Chimera++ and codebook-mask variants.

``model.py`` joins ``features.py`` (log-magnitude input), ``trunk.py`` (BLSTM),
``embedding_head.py`` (the DC embeddings) and a mask head from ``mask_heads.py`` (real masks
and the factory) or ``codebook_heads.py`` (magbook, phasebook, combook); ``config.py`` and
``presets.py`` describe them, ``checkpoint.py`` stores them.
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .codebook_heads import CombookHead, MagbookHead, PhasebookHead
from .config import ModelConfig, StftConfig
from .embedding_head import EmbeddingHead
from .features import LogMagnitude, fit_statistics
from .mask_heads import MaskHead, make_mask_head
from .model import ModelOutput, SeparationModel, apply_masks, flatten_bins
from .presets import PRESETS, preset
from .trunk import BLSTMTrunk

__all__ = [
    "BLSTMTrunk", "CheckpointError", "CombookHead", "EmbeddingHead", "LogMagnitude", "MagbookHead", "MaskHead",
    "ModelConfig", "ModelOutput", "PRESETS", "PhasebookHead", "SeparationModel", "StftConfig", "fit_statistics",
    "apply_masks", "flatten_bins", "load_checkpoint", "make_mask_head", "preset", "save_checkpoint",
]
