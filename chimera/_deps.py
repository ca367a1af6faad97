"""Optional dependencies, each named by the extra of the distribution that installs it.

``require("eval", "museval", "chimera evaluate")`` at the start of a command either returns
the module or raises one ImportError whose message says what to install, before any work.
"""
import importlib

DISTRIBUTION = "chimera-separation"  # the name on PyPI; the import name is `chimera`
EXTRAS = ("train", "eval")           # as in pyproject.toml's [project.optional-dependencies]


class MissingDependency(ImportError):
    pass


def install_hint(extra):
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(extra, module, needed_by="chimera"):
    """Import `module` (an optional dependency from `extra`) or raise MissingDependency."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}: one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{needed_by} needs {module} ({exc}): {install_hint(extra)}") from exc
