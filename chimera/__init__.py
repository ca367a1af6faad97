"""chimera: single-channel source separation with the deep clustering family."""
import logging

from ._version import __version__  # noqa: F401

# The library reports through the "chimera" logger and shows nothing unless the
# application configures logging (the `chimera` CLI does: chimera.cli.setup_logging).
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # Lazy, as it is measurably slow: `import chimera` takes 0.06 s, `import chimera.separate`
    # 2.6 s (torch, numpy, soundfile, soxr; 2-core EPYC, best of 5).
    if name == "Separator":
        from .separate import Separator
        return Separator
    raise AttributeError(f"module 'chimera' has no attribute {name!r}")
