"""Kept only for ``chimera/data/synth.py`` until it moves to ``tools/`` (issue 17): audio I/O
lives in :mod:`chimera.audio`. Delete this file once synth imports from there."""
from ..audio import read_audio, resample, write_audio  # noqa: F401
