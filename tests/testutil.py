"""Helpers shared by the test modules (conftest.py holds only fixtures and hooks)."""
import os

import pytest
import torch

EXT_DISABLED = os.environ.get("CHIMERA_DISABLE_EXT", "") == "1"


def cuda(obj):
    """Mark a CUDA test: selected by `pytest -m cuda` (make test-cuda), skipped without a GPU."""
    obj = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(obj)
    return pytest.mark.cuda(obj)
