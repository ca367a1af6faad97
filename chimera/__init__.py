"""chimera: single-channel source separation with the deep clustering family."""
__version__ = "0.1.0"
