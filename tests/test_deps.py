"""chimera._deps: an optional dependency that is missing names the extra that installs it."""
import json
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pytest

from chimera import _deps

ROOT = Path(__file__).resolve().parents[1]


def test_present_module_is_returned():
    assert _deps.require("eval", "json") is json


def test_missing_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "museval", None)  # import museval -> ImportError, installed or not
    with pytest.raises(_deps.MissingDependency) as info:
        _deps.require("eval", "museval", "chimera evaluate")
    message = str(info.value)
    assert message.startswith("chimera evaluate needs museval (")
    assert message.endswith(": pip install 'chimera-separation[eval]'")
    assert isinstance(info.value, ImportError)


def test_unknown_extra_is_refused():
    with pytest.raises(ValueError, match="unknown extra 'evl'"):
        _deps.require("evl", "json")


def test_names_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == _deps.DISTRIBUTION
    assert set(project["optional-dependencies"]) - {"dev"} == set(_deps.EXTRAS)
