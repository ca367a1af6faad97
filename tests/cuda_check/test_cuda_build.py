"""The CUDA build of the extension, checked without a GPU (`make cuda-check`).

`make cuda-check` builds chimera with CHIMERA_CUDA=1 against the CUDA torch of
.venv-cuda into a build folder and runs this module there with
CHIMERA_CUDA_CHECK_LIB set; then every check must hold. Anywhere else (CPU torch,
or an extension built without CUDA) the module is skipped.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CHECK_LIB = os.environ.get("CHIMERA_CUDA_CHECK_LIB")

if not CHECK_LIB:
    if torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch (run `make cuda-check`)", allow_module_level=True)
    _spec = importlib.util.find_spec("chimera._C")
    if _spec is None:
        pytest.skip("chimera._C is not built", allow_module_level=True)

import chimera  # noqa: E402
import chimera.ops  # noqa: E402

if not CHECK_LIB and not chimera.ops.extension_info().get("with_cuda"):
    pytest.skip("chimera._C was built without CUDA (run `make cuda-check`)", allow_module_level=True)


def schema_ops():
    """Every op declared in csrc/ops.cpp: the list the CUDA build must cover."""
    text = (ROOT / "csrc" / "ops.cpp").read_text()
    return sorted(set(re.findall(r'm\.def\(\s*"(\w+)\(', text)))


def test_imports_the_built_package():
    if not CHECK_LIB:
        pytest.skip("only meaningful under make cuda-check")
    assert Path(chimera.__file__).resolve().is_relative_to(Path(CHECK_LIB).resolve()), (
        f"imported {chimera.__file__}, not the CUDA build in {CHECK_LIB}"
    )


def test_extension_loads_with_cuda():
    info = chimera.ops.extension_info()
    assert info["loaded"], info
    assert info["with_cuda"] is True
    assert chimera.ops._extension.module.with_cuda == 1
    assert torch.version.cuda is not None


@pytest.mark.parametrize("key", ["CPU", "CUDA"])
def test_every_op_has_a_kernel(key):
    ops = schema_ops()
    assert ops, "no op schemas found in csrc/ops.cpp"
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"chimera::{op}", key)]
    assert not missing, f"ops without a {key} kernel: {missing}"


def test_backend_uses_the_compiled_kernels():
    backend = chimera.ops.backend()
    assert sorted(backend) == schema_ops(), "chimera.ops registers a different set of ops than csrc/ops.cpp"
    wrong = {op: b for op, b in backend.items() if b != {"cpu": "cpp", "cuda": "cuda"}}
    assert not wrong, f"ops falling back to the reference: {wrong}"


def test_every_cu_file_is_built():
    listed = (ROOT / "csrc" / "sources.txt").read_text().split()
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    assert on_disk, "no .cu files under csrc/"
    assert [p for p in on_disk if p not in listed] == [], "some .cu files are not in csrc/sources.txt"


def test_chimera_info_reports_cuda():
    out = subprocess.run(
        [sys.executable, "-P", "-m", "chimera", "info"], capture_output=True, text=True, timeout=120,
        env=os.environ.copy(), cwd=os.path.dirname(os.path.dirname(chimera.__file__)),
    )
    assert out.returncode == 0, out.stderr
    assert "with CUDA kernels" in out.stdout, out.stdout
    for op in chimera.ops.backend():  # every op's line names the cuda backend
        assert re.search(rf"^\s+{op}\s+cpp\s+cuda\s*$", out.stdout, re.MULTILINE), (op, out.stdout)


def test_kernel_image_probe_is_built_and_answers_without_a_gpu():
    module = chimera.ops._extension.module
    if CHECK_LIB:  # make cuda-check passes the list it built for
        assert module.cuda_archs == os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        code, message = module.cuda_image_status(torch.cuda.current_device())
        assert (code, message) == (0, "no error")  # this GPU's architecture is in the build
    else:  # no device (or no driver): an error code and its message, not a crash
        code, message = module.cuda_image_status(0)
        assert code != 0 and message and message != "no error"
