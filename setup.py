"""Build chimera and its torch extension ``chimera._C``.

`pip install .` builds it against the torch installed where chimera is installed (the
in-tree backend build_backend/chimera_build.py asks for that exact torch in the isolated
build environment); `pip install --no-build-isolation .` uses the torch that is
importable. The extension is a CppExtension (CPU kernels) that becomes a CUDAExtension
when that torch is a CUDA build and a CUDA toolkit is found; CHIMERA_CUDA=0|1 overrides
the choice. An sdist needs no torch. A build that fails (no compiler, a compile error)
leaves chimera without chimera._C -- one message, and chimera.ops runs its pure-PyTorch
references -- unless CHIMERA_REQUIRE_EXT=1, which makes it an error.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    torch = None

# Commands that compile the extension; the others (sdist, egg_info, dist_info) run without torch.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "bdist_egg"}
NO_TORCH = (  # keep this message short: it is what a user sees first
    "chimera: PyTorch is not importable, so chimera._C cannot be compiled.\n"
    "`pip install .` (with build isolation) installs the right torch for the build; with\n"
    "--no-build-isolation, install torch first (e.g. `pip install torch`)."
)
ROOT = os.path.dirname(os.path.abspath(__file__))
# The compile flags; CMakeLists.txt uses the same (but -g0: there the build type says).
CXX_FLAGS = ["-O3", "-g0", "-fvisibility=hidden", "-Wno-psabi"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-Xcompiler=-Wall"]
NOT_BUILT = (  # one line: what `make demo` on a machine without a C++ compiler shows
    "chimera: chimera._C was not built ({}); chimera runs on its pure-PyTorch reference kernels "
    "(slower). Install a C++ compiler and rebuild, or set CHIMERA_REQUIRE_EXT=1 to make this an error."
)


def read_sources(kind):
    """One list of sources for setup.py and CMakeLists.txt: csrc/sources.txt."""
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        entries = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return [path for k, path in entries if k == kind]


def depends():
    """What the objects depend on besides their sources. With ninja, torch's builder forces
    every build and ninja recompiles what changed; without, setuptools skips the build when
    no *source* is newer than the built library, so the headers (every other file of csrc/),
    the source list, this file (the flags) and the torch compiled against are listed."""
    files = [os.path.join("csrc", f) for f in glob.glob("**/*", root_dir=os.path.join(ROOT, "csrc"), recursive=True)]
    sources = set(read_sources("cpp") + read_sources("cuda"))
    return sorted(f for f in files if f not in sources and os.path.isfile(os.path.join(ROOT, f))) + [
        "setup.py", os.path.join(os.path.dirname(torch.__file__), "version.py")]


def ninja_available():
    """torch's builder runs the ninja on PATH. A venv's own (the [dev] extra) is on PATH only
    while the venv is active -- not for `.venv/bin/python setup.py` or `.venv/bin/pip install
    --no-build-isolation -e .` as make runs them -- so the folder of this Python goes on PATH
    when it holds one. Without ninja, files compile one after another (MAX_JOBS means nothing)
    and every one again after any change."""
    here = os.path.dirname(sys.executable)
    if shutil.which("ninja") is None and shutil.which("ninja", path=here):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def require_ext():
    """CHIMERA_REQUIRE_EXT, read as chimera.ops reads it (chimera/ops/_extension.py: flag)."""
    return os.environ.get("CHIMERA_REQUIRE_EXT", "").strip().lower() in ("1", "true", "yes", "on")


def build_ext_command():
    """torch's BuildExtension, where a failed build is one line: an error with
    CHIMERA_REQUIRE_EXT=1, else NOT_BUILT and no chimera._C (a library of earlier sources in
    the build folder or, for an in-place or editable build, in the package is removed)."""
    base = cpp_extension.BuildExtension.with_options(use_ninja=ninja_available())

    class BuildExtension(base):
        failed = False

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:  # the compiler's own output is above
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if require_ext():
                    sys.exit(f"chimera: building chimera._C failed (CHIMERA_REQUIRE_EXT=1): {reason}")
                self.failed = True
                for ext in self.extensions:
                    ext.optional = True  # setuptools then copies nothing in place
                    remove(self.get_ext_fullpath(ext.name))
                print(NOT_BUILT.format(reason), file=sys.stderr)

        def run(self):
            inplace = self.inplace  # setuptools builds in build/ with it unset, then copies in place
            super().run()
            if self.failed and inplace:
                for ext in self.extensions:
                    remove(os.path.join(ROOT, self.get_ext_filename(ext.name)))

    return BuildExtension


def remove(path):
    if os.path.exists(path):
        os.remove(path)


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


# When torch cannot say which architectures it was built for: every major one since
# Turing (the oldest CUDA 13 targets), PTX on the last so newer GPUs JIT-compile it.
BROAD_CUDA_ARCHS = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")


def torch_cuda_archs():
    """The architectures the installed torch's own kernels were built for, as "8.0", "9.0",
    ...; get_arch_list() is empty without a visible GPU, so the build flags are asked too.
    Family variants (sm_90a) are folded into their base: our kernels use no such features."""
    flags = torch.cuda.get_arch_list() or (getattr(torch._C, "_cuda_getArchFlags", lambda: "")() or "").split()
    archs = {f"{m[1]}.{m[2]}" for m in (re.fullmatch(r"sm_(\d+)(\d)[af]?", f) for f in flags) if m}
    return sorted(archs, key=_arch_key)


def _arch_key(arch):
    return tuple(map(int, arch.split(".")))


def nvcc_archs(cuda_home):
    """The virtual architectures this nvcc can target ("7.5", ...), or None if it cannot say."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = {f"{m[1]}.{m[2]}" for m in re.finditer(r"compute_(\d+)(\d)\b", out)}
    return found or None


def default_cuda_arch_list(cuda_home):
    """TORCH_CUDA_ARCH_LIST when the user set none: torch's own architectures (our kernels
    then run wherever torch's do, whichever GPU the build host has or lacks), else a broad
    list; only those nvcc supports, with PTX for the newest."""
    archs = torch_cuda_archs() or list(BROAD_CUDA_ARCHS)
    supported = nvcc_archs(cuda_home)
    if supported is not None:
        archs = [a for a in archs if a in supported] or [max(supported, key=_arch_key)]
    return ";".join(archs) + "+PTX"


def extension():
    # No -std flag: torch adds the standard its headers need (C++20 since 2.x).
    cxx = CXX_FLAGS + ["-DCHIMERA_TORCH_VERSION=\"%s\"" % torch.__version__]
    # at::parallel_for is inline in ATen's headers: without -fopenmp its `omp parallel` is
    # ignored and every kernel runs on one thread. libgomp resolves to torch's own copy
    # (same soname, already loaded), so there is one thread pool.
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    sources = read_sources("cpp")
    if not want_cuda():
        return cpp_extension.CppExtension(
            "chimera._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link,
            include_dirs=[os.path.join(ROOT, "csrc")], depends=depends(),
        )
    cuda_home = find_cuda_home()
    os.environ.setdefault("CUDA_HOME", cuda_home)
    cpp_extension.CUDA_HOME = cuda_home
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or default_cuda_arch_list(cuda_home)
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    print(f"chimera: CUDA kernels for TORCH_CUDA_ARCH_LIST={archs}", file=sys.stderr)
    nvcc = NVCC_FLAGS + ["-DCHIMERA_WITH_CUDA"]
    if os.environ.get("CHIMERA_WERROR") == "1":  # make cuda-check: our .cu files build without warnings
        nvcc += ["-Werror=all-warnings", "-Xcompiler=-Werror"]
    inc_cxx, inc_nvcc = after_system_includes(torch_nvidia_includes())
    return cpp_extension.CUDAExtension(
        "chimera._C",
        sources + read_sources("cuda"),
        extra_compile_args={"cxx": cxx + ["-DCHIMERA_WITH_CUDA", f'-DCHIMERA_CUDA_ARCHS="{archs}"'] + inc_cxx, "nvcc": nvcc + inc_nvcc},
        extra_link_args=link,
        include_dirs=[os.path.join(ROOT, "csrc")],
        depends=depends(),
    )


def main():
    if torch is None:
        if not BUILD_COMMANDS.isdisjoint(sys.argv[1:]):
            sys.exit(NO_TORCH)
        return setup()  # an sdist or metadata: nothing to compile
    return setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": build_ext_command()},
    )


if __name__ == "__main__":  # setuptools' backend runs this file as __main__ too; tests import it
    main()
