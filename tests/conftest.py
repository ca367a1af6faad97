import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    # Small LSTMs run many times faster on one thread than on contended cores.
    yield from _threads(1)


@pytest.fixture
def two_threads():
    # Kernels split into parallel tasks, as in the issues' 2-thread figures.
    yield from _threads(2)


# Every instruction-set path of the CPU kernels this machine runs (chimera.ops.isa): a test
# that takes `cpu_path` runs once per path, so an AVX-512 machine also tests the AVX2 and
# baseline code. Without the extension: one run, on the references.
from chimera.ops import isa as _isa  # noqa: E402  (after the fixtures above, which need no chimera)

CPU_PATHS = _isa.supported_cpu_capabilities() or ("reference",)


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request):
    if request.param == "reference":
        yield None
        return
    with _isa.use_cpu_capability(request.param):
        yield request.param
