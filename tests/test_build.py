"""The build: the in-tree PEP 517 backend, setup.py without torch, the CUDA architecture
default, the sdist's contents and the package metadata. Fast checks; the installs
themselves (pip, pip wheel, sdist, uv) run in `make install-check` (.ci/install-check)."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build_backend"))
import chimera_build  # noqa: E402  (the backend lives beside the package, not in it)


def load_setup_py():
    spec = importlib.util.spec_from_file_location("chimera_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


def hide_torch(tmp_path):
    """Environment in which `import torch` fails, like an interpreter without it."""
    site = tmp_path / "no-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    return {**os.environ, "PYTHONPATH": str(site)}


def pip_like_isolation(tmp_path):
    """What pip does to a build hook: PYTHONPATH names a sitecustomize.py that drops the
    target's site-packages (here: keeping only setuptools, in a build environment of its
    own), and PYTHONNOUSERSITE=1."""
    import _distutils_hack
    import setuptools
    site, build_env = tmp_path / "isolated", tmp_path / "build-env"
    site.mkdir()
    build_env.mkdir()
    for module in (setuptools, _distutils_hack):
        (build_env / module.__name__).symlink_to(Path(module.__file__).parent)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + [{str(build_env)!r}]\n")
    return {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}


def test_backend_requires_the_torch_of_the_target_environment():
    assert chimera_build.torch_requirement() == f"torch=={metadata.version('torch')}"


def test_backend_adds_ninja_only_when_none_is_on_path(monkeypatch):
    torch = f"torch=={metadata.version('torch')}"
    monkeypatch.setattr(chimera_build.shutil, "which", lambda name: None)
    assert chimera_build.extension_requirements() == [torch, "ninja"]
    monkeypatch.setattr(chimera_build.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert chimera_build.extension_requirements() == [torch]


def test_backend_sees_the_target_torch_through_the_isolation(tmp_path):
    env = pip_like_isolation(tmp_path)
    hidden = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert hidden.returncode != 0  # the isolation does hide it from the hook ...
    hook = ("import sys; sys.path.insert(0, 'build_backend'); import chimera_build; "
            "print(chimera_build.torch_requirement())")
    out = subprocess.run([sys.executable, "-c", hook], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"torch=={metadata.version('torch')}"]  # ... and the backend still finds it


def test_backend_asks_for_plain_torch_where_none_is_installed(tmp_path, monkeypatch):
    monkeypatch.delenv("UV", raising=False)
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert chimera_build.torch_requirement(str(venv / "bin" / "python")) == "torch"


def test_backend_under_uv_without_the_runtime_torch_stops_with_the_hint(tmp_path, monkeypatch):
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.setenv("UV", "/usr/bin/uv")
    with pytest.raises(SystemExit) as info:
        chimera_build.torch_requirement(str(venv / "bin" / "python"))
    assert "match-runtime = true" in str(info.value) and "--no-build-isolation" in str(info.value)
    assert chimera_build.torch_requirement() == f"torch=={metadata.version('torch')}"  # torch there: fine


def test_setup_py_without_torch_writes_metadata_and_refuses_to_compile(tmp_path):
    env = hide_torch(tmp_path)
    name = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert name.returncode == 0, name.stderr
    assert name.stdout.split()[-1] == "chimera-separation"
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "t")],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    assert build.returncode != 0
    assert "PyTorch is not importable" in build.stderr and "--no-build-isolation" in build.stderr


def sdist_files(tmp_path):
    """The paths in the sdist built into `tmp_path` without torch (as `python -m build --sdist`)."""
    # a fresh egg-info: setuptools would otherwise add every file a stale SOURCES.txt names
    out = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                          "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT,
                         env=hide_torch(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (sdist,) = tmp_path.glob("chimera_separation-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    return names


def test_sdist_holds_everything_the_build_reads(tmp_path):
    """Built the way an isolated `python -m build --sdist` builds it: without torch."""
    names = sdist_files(tmp_path)
    sources = [line.split()[1] for line in (ROOT / "csrc/sources.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    needed = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "CMakeLists.txt",
              "build_backend/chimera_build.py", "csrc/sources.txt", "chimera/pretrained/vocals-accompaniment.pt",
              *sources, *(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h")),
              *(str(p.relative_to(ROOT)) for p in (ROOT / "LICENSES").iterdir())}
    assert needed <= names, sorted(needed - names)
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_metadata_declares_the_licences_and_a_setuptools_that_reads_them():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["license"] == "MIT AND GPL-2.0-or-later"
    files = [p for pattern in project["license-files"] for p in ROOT.glob(pattern)]
    texts = "\n".join(p.read_text() for p in files)
    assert "MIT License" in texts and "GNU GENERAL PUBLIC LICENSE\n                       Version 2" in texts
    (floor,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    assert floor == "setuptools>=77.0.3"  # the first release reading PEP 639 expressions reliably
    assert "tomli>=1.1; python_version < '3.11'" in project["dependencies"]


@pytest.fixture
def setup_py(monkeypatch):
    module = load_setup_py()
    if module.torch is None:
        pytest.skip("torch is not importable")
    return module


def fake_nvcc(tmp_path, archs):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n" + "".join(f"echo compute_{a}\n" for a in archs))
    nvcc.chmod(0o755)
    return str(home)


def test_cuda_archs_default_to_those_of_torch(setup_py, monkeypatch, tmp_path):
    monkeypatch.setattr(setup_py.torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_90a", "sm_90", "sm_120"])
    home = fake_nvcc(tmp_path, ["75", "80", "90", "90a", "120"])
    assert setup_py.default_cuda_arch_list(home) == "8.0;9.0;12.0+PTX"


def test_cuda_archs_without_torch_archs_are_a_broad_list_nvcc_supports(setup_py, monkeypatch, tmp_path):
    monkeypatch.setattr(setup_py.torch.cuda, "get_arch_list", lambda: [])
    monkeypatch.setattr(setup_py.torch._C, "_cuda_getArchFlags", lambda: "", raising=False)
    home = fake_nvcc(tmp_path, ["75", "80", "86", "89", "90", "100", "103", "120", "121"])
    assert setup_py.default_cuda_arch_list(home) == "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    older = fake_nvcc(tmp_path / "old", ["75", "80", "86"])
    assert setup_py.default_cuda_arch_list(older) == "7.5;8.0;8.6+PTX"


def test_version_agrees_with_the_package(tmp_path):
    """The version is written twice: pyproject.toml (static: uv's match-runtime needs static
    metadata, `dynamic` breaks `uv pip install .`) and chimera/_version.py."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "dynamic" not in pyproject["project"]
    namespace = {}
    exec((ROOT / "chimera/_version.py").read_text(), namespace)
    assert pyproject["project"]["version"] == namespace["__version__"]
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=hide_torch(tmp_path),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == namespace["__version__"]


def test_sdist_ships_no_partial_test_suite(tmp_path):
    """setuptools adds tests/test*.py to an sdist by default, without the conftest, helpers and
    data they import (nor the Makefile, tools/, .ci/ many need): the suite runs from a clone."""
    names = sdist_files(tmp_path)
    assert not [n for n in names if n.startswith("tests")]


def test_extension_depends_on_its_headers_and_build_inputs(setup_py):
    """Without ninja (torch's builder then compiles with setuptools, which does not force the
    build), `setup.py build_ext` (make ext) is skipped when no *source* is newer than the
    built library: a changed header, source list, flag (setup.py) or torch must count too."""
    ext = setup_py.extension()
    sources = set(setup_py.read_sources("cpp") + setup_py.read_sources("cuda"))
    others = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()} - sources
    assert others and others <= set(ext.depends), sorted(others - set(ext.depends))
    assert "setup.py" in ext.depends
    assert str(Path(setup_py.torch.__file__).with_name("version.py")) in ext.depends


def test_setup_py_finds_the_ninja_beside_its_python(setup_py, monkeypatch, tmp_path):
    """make runs .venv/bin/python setup.py (and pip -e) without the venv on PATH: the ninja of
    the [dev] extra is used all the same (without it MAX_JOBS means nothing)."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "ninja").write_text("#!/bin/sh\n")
    (bin_dir / "ninja").chmod(0o755)
    monkeypatch.setattr(setup_py.sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert setup_py.ninja_available()
    assert os.environ["PATH"].split(os.pathsep)[0] == str(bin_dir)
    monkeypatch.setattr(setup_py.sys, "executable", str(tmp_path / "elsewhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert not setup_py.ninja_available()


def copy_build_tree(tmp_path):
    """The files `setup.py build_ext` reads, in a folder of their own (an in-place build there
    touches nothing of this checkout)."""
    tree = tmp_path / "tree"
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes((ROOT / name).read_bytes())
    for folder in ("csrc", "LICENSES", "build_backend"):
        shutil.copytree(ROOT / folder, tree / folder)
    shutil.copytree(ROOT / "chimera", tree / "chimera", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pt"))
    return tree


def build_without_compiler(tree, **env):
    """setup.py build_ext --inplace where the C++ compiler fails at once (as a missing one does)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                          env={**clean, "CXX": "/bin/false", "CC": "/bin/false", **env},
                          capture_output=True, text=True, timeout=300)


def test_failed_extension_build_leaves_the_references_with_one_message(setup_py, tmp_path):
    tree = copy_build_tree(tmp_path)
    stale = tree / "chimera" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    stale.write_text("a library of earlier sources")  # what a failed rebuild must not leave in use
    out = build_without_compiler(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("chimera:")]
    assert "chimera._C was not built" in line and "pure-PyTorch" in line and "CHIMERA_REQUIRE_EXT=1" in line
    assert not stale.exists()


def test_failed_extension_build_is_an_error_with_require_ext(setup_py, tmp_path):
    out = build_without_compiler(copy_build_tree(tmp_path), CHIMERA_REQUIRE_EXT="1")
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("chimera: building chimera._C failed (CHIMERA_REQUIRE_EXT=1): ")


def cmake_options(language):
    text = (ROOT / "CMakeLists.txt").read_text()
    return " ".join(re.findall(rf"\$<\$<COMPILE_LANGUAGE:{language}>:([^>]*)>", text)).split()


def test_cmake_compiles_with_the_flags_of_setup_py(setup_py):
    """CMakeLists.txt builds the sources setup.py builds (csrc/sources.txt) with its flags, but
    for the debug level, which CMake's build type chooses (sanitizer builds want -g)."""
    assert set(setup_py.CXX_FLAGS) - {"-g0"} <= set(cmake_options("CXX"))
    assert set(setup_py.NVCC_FLAGS) <= set(cmake_options("CUDA"))  # --expt-relaxed-constexpr: codebook.h needs it
