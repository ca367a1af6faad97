"""The build: the in-tree PEP 517 backend, setup.py without torch, the CUDA architecture
default, the sdist's contents and the package metadata. Fast checks; the installs
themselves (pip, pip wheel, sdist, uv) run in `make install-check` (.ci/install-check)."""
import importlib.util
import os
import subprocess
import sys
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


def test_sdist_holds_everything_the_build_reads(tmp_path):
    """Built the way an isolated `python -m build --sdist` builds it: without torch."""
    # a fresh egg-info: setuptools would otherwise add every file a stale SOURCES.txt names
    out = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
                          "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT,
                         env=hide_torch(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (sdist,) = tmp_path.glob("chimera_separation-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
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
