import os

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
EXT_DISABLED = os.environ.get("CHIMERA_DISABLE_EXT", "") == "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
