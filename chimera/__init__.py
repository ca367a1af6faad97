"""chimera: single-channel source separation with the deep clustering family."""
import logging

__version__ = "0.1.0"

# The library reports through the "chimera" logger and shows nothing unless the
# application configures logging (the `chimera` CLI does: chimera.cli.setup_logging).
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # Lazy, as it is measurably slow: chimera.separate pulls in torch, numpy, soundfile and
    # soxr, so importing it here would cost every `import chimera` (CLI start included).
    if name == "Separator":
        from .separate import Separator
        return Separator
    raise AttributeError(f"module 'chimera' has no attribute {name!r}")
