"""chimera: single-channel source separation with the deep clustering family."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import chimera` stays light
    if name == "Separator":
        from .separate import Separator
        return Separator
    raise AttributeError(f"module 'chimera' has no attribute {name!r}")
