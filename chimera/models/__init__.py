"""Models of the deep clustering family: DC, Chimera, Chimera++ and codebook-mask variants."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ModelConfig, StftConfig
from .features import LogMagnitude, fit_statistics
from .mask_heads import EmbeddingHead, MaskHead, make_mask_head
from .model import ModelOutput, SeparationModel, flatten_bins
from .presets import PRESETS, preset
from .trunk import BLSTMTrunk

__all__ = [
    "BLSTMTrunk", "CheckpointError", "EmbeddingHead", "LogMagnitude", "MaskHead", "ModelConfig", "ModelOutput",
    "PRESETS", "SeparationModel", "StftConfig", "fit_statistics", "flatten_bins", "load_checkpoint",
    "make_mask_head", "preset", "save_checkpoint",
]
