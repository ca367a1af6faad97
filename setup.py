"""Build chimera and its torch extension ``chimera._C``.

The extension is a CppExtension (CPU kernels) that becomes a CUDAExtension when
the installed torch is a CUDA build and a CUDA toolkit is found; CHIMERA_CUDA=0|1
overrides that choice. Build with ``pip install --no-build-isolation .`` so the
extension is compiled against the torch that is actually installed.
"""
import glob
import os
import shutil
import sys

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # keep this message short: it is what a user sees first
    sys.exit(
        "chimera: PyTorch is not importable in this environment.\n"
        "Install torch first (e.g. `pip install torch`), then build chimera with\n"
        "    pip install --no-build-isolation .\n"
        "(with build isolation pip compiles against a different torch than the one "
        "installed, and the extension cannot load)."
    )

from setuptools import setup  # noqa: E402  (after the torch check: its message comes first)

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_sources(kind):
    """One list of sources for setup.py and CMakeLists.txt: csrc/sources.txt."""
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        entries = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return [path for k, path in entries if k == kind]


def is_cuda_home(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h")
    )


def find_cuda_home():
    """CUDA_HOME / CUDA_PATH when set (trusted, as torch does), else the toolkit around
    nvcc, else /usr/local/cuda. torch guesses CUDA_HOME from the nvcc on PATH, which is
    wrong when that nvcc is a wrapper script (/usr/local/bin/nvcc -> CUDA_HOME=/usr/local,
    which has no CUDA headers): so a guess counts only if it holds nvcc and cuda_runtime.h."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = [cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.insert(1, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((home for home in candidates if is_cuda_home(home)), None)


def want_cuda():
    flag = os.environ.get("CHIMERA_CUDA")
    if flag is not None:
        if flag not in ("0", "1"):
            sys.exit(f"chimera: CHIMERA_CUDA must be 0 or 1, got {flag!r}")
        if flag == "1" and torch.version.cuda is None:
            sys.exit("chimera: CHIMERA_CUDA=1 but the installed torch is a CPU-only build")
        if flag == "1" and find_cuda_home() is None:
            sys.exit("chimera: CHIMERA_CUDA=1 but no CUDA toolkit found (set CUDA_HOME)")
        return flag == "1"
    return torch.version.cuda is not None and find_cuda_home() is not None


def torch_nvidia_includes():
    """Headers that torch's CUDA headers include (cublas_v2.h, ...) ship in the
    nvidia-* wheels next to torch; a bare nvcc install lacks them."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    major = (torch.version.cuda or "").split(".")[0]
    return sorted(glob.glob(os.path.join(site, "nvidia", f"cu{major or '*'}", "include")))


def after_system_includes(dirs):
    """-idirafter: searched after the toolkit's own include folder, so these only fill in
    what the toolkit lacks and never shadow its headers (harmless on a full toolkit)."""
    cxx = [f"-idirafter{d}" for d in dirs]
    return cxx, [f"-Xcompiler=-idirafter{d}" for d in dirs]


def extension():
    # No -std flag: torch adds the standard its headers need (C++20 since 2.x).
    cxx = ["-O3", "-g0", "-fvisibility=hidden", "-DCHIMERA_TORCH_VERSION=\"%s\"" % torch.__version__]
    sources = read_sources("cpp")
    if not want_cuda():
        return cpp_extension.CppExtension(
            "chimera._C", sources, extra_compile_args={"cxx": cxx}, include_dirs=[os.path.join(ROOT, "csrc")]
        )
    cuda_home = find_cuda_home()
    os.environ.setdefault("CUDA_HOME", cuda_home)
    cpp_extension.CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # Hopper: build hosts without a GPU still build
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler=-Wall", "-DCHIMERA_WITH_CUDA"]
    if os.environ.get("CHIMERA_WERROR") == "1":  # make cuda-check: our .cu files build without warnings
        nvcc += ["-Werror=all-warnings", "-Xcompiler=-Werror"]
    inc_cxx, inc_nvcc = after_system_includes(torch_nvidia_includes())
    return cpp_extension.CUDAExtension(
        "chimera._C",
        sources + read_sources("cuda"),
        extra_compile_args={"cxx": cxx + ["-DCHIMERA_WITH_CUDA"] + inc_cxx, "nvcc": nvcc + inc_nvcc},
        include_dirs=[os.path.join(ROOT, "csrc")],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
