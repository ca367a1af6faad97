"""PEP 517 build backend of chimera: setuptools, plus the torch to compile against.

chimera's extension must be compiled against the torch that will import it (the C++ ABI
changes between torch releases). A front-end that isolates the build (pip, `pip wheel`,
uv) installs the build requirements into a fresh environment, so a bare ``torch`` there
would be whatever release the index serves today. Here the wheel and editable hooks ask
the target interpreter -- the one running the hook, with the front-end's isolation
undone -- which torch it has, and require exactly that version (local label included,
so a ``+cpu`` torch is never swapped for a CUDA build). Without torch there, plain
``torch``: the build takes the newest release and so will the runtime dependency.
Under uv the build environment already holds the runtime torch (see below). Building an
sdist needs no torch at all. Every other hook is setuptools' own.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (re-exported hooks)
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

# What a front-end sets to hide the target environment from the build (pip: PYTHONPATH
# names a sitecustomize.py that drops the target's site-packages; PYTHONNOUSERSITE=1).
_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")
_QUERY = "import importlib.metadata as m; print(m.version('torch'))"


def target_torch_version(python):
    """The version of torch installed for interpreter `python`, seen without the build
    isolation; None when it has none."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARIABLES}
    try:
        # cwd outside the source tree: nothing here may shadow an installed package.
        result = subprocess.run([python, "-c", _QUERY], env=env, cwd=tempfile.gettempdir(),
                                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version else None


# uv (which sets $UV for its subprocesses) runs the hooks in a build environment of its own
# and says nothing of the target. Its `extra-build-dependencies` setting in pyproject.toml
# puts the runtime torch there first; without it, plain `torch` would fetch the newest
# (CUDA) release into the build, not the torch that will import the extension.
UV_WITHOUT_RUNTIME_TORCH = (
    "chimera build: uv did not put the runtime torch into the build environment. Run\n"
    "`uv pip install .` in chimera's folder (its pyproject.toml asks uv for that torch), add\n"
    "  [tool.uv.extra-build-dependencies]\n"
    '  chimera-separation = [{ requirement = "torch", match-runtime = true }]\n'
    "to your project's pyproject.toml, or install torch first and pass --no-build-isolation."
)


def torch_requirement(python=sys.executable):
    version = target_torch_version(python)
    if version is None and os.environ.get("UV"):
        sys.exit(UV_WITHOUT_RUNTIME_TORCH)
    requirement = f"torch=={version}" if version else "torch"
    where = "installed" if version else "none installed"
    print(f"chimera build: compiling against {requirement} ({where} for {python})", file=sys.stderr)
    return requirement


def extension_requirements():
    """torch, and ninja unless one is on PATH: torch's extension builder compiles
    MAX_JOBS files at a time with it, one after another without."""
    return [torch_requirement()] + ([] if shutil.which("ninja") else ["ninja"])


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + extension_requirements()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + extension_requirements()
