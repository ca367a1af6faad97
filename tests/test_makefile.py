"""The Makefile: `make help` is generated from the `##` comments and lists every target."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args):
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True)


def phony_targets():
    """Every .PHONY target of the Makefile and mk/*.mk, from make's own database."""
    database = make("-pRrq", "--", ":").stdout  # -q: nothing is run
    return {t for line in database.splitlines() if line.startswith(".PHONY:") for t in line.split()[1:]}


def test_help_lists_every_target_once_with_its_description():
    out = make("help")
    assert out.returncode == 0, out.stderr
    listed = re.findall(r"^  make (\S+) +(\S.*)$", out.stdout, flags=re.M)
    names = [name for name, _ in listed]
    assert len(names) == len(set(names))
    targets = phony_targets()
    assert {"test", "demo", "install-check", "cuda-check", "demo-data"} <= targets
    assert set(names) == targets


def test_help_aligns_every_description_and_shows_no_make_syntax():
    out = make("help")
    lines = out.stdout.splitlines()
    starts = {re.match(r"  make \S+ +", line).end() for line in lines}
    assert len(starts) == 1, lines  # one column, however long the longest name
    assert not [line for line in lines if "$(" in line]


def make_in_copy(tmp_path, files, *args):
    """make in a copy of the Makefile, mk/ and csrc/ with `files` ({path: text}) added."""
    tree = tmp_path / "tree"
    for name in ("Makefile", "pyproject.toml", "tools/demodata/packages.py"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tree / name)
    for folder in ("mk", "csrc"):
        shutil.copytree(ROOT / folder, tree / folder)
    for name, text in files.items():
        (tree / name).write_text(text)
    return subprocess.run(["make", "--no-print-directory", "-C", str(tree), *args], capture_output=True, text=True)


def variable(tmp_path, name, files=()):
    out = make_in_copy(tmp_path, dict(files), "--eval", "print-%: ; @echo $($*)", f"print-{name}")
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def cpp_sources():
    return [line.split()[1] for line in (ROOT / "csrc/sources.txt").read_text().splitlines()
            if line.startswith("cpp ")]


def test_extension_stamp_depends_on_every_file_of_csrc(tmp_path):
    """A new header anywhere in csrc/ (a CUDA one say) rebuilds the extension (make ext)."""
    names = set(variable(tmp_path, "EXT_SOURCES", {"csrc/cuda/new_helpers.cuh": "#pragma once\n"}))
    tree = tmp_path / "tree"
    assert {str(p.relative_to(tree)) for p in (tree / "csrc").rglob("*") if p.is_file()} <= names


def test_arm_check_compiles_the_cpp_sources_of_sources_txt(tmp_path):
    """csrc/sources.txt is the one list: a file it does not name is not compiled."""
    assert variable(tmp_path, "ARM_SOURCES", {"csrc/cpu/unlisted.cpp": "#error not a source\n"}) == cpp_sources()


def test_cuda_build_honours_max_jobs_and_requires_the_extension():
    """MAX_JOBS is honoured (README); cuda-check must fail when the CUDA build fails, not test
    a package that fell back to the references."""
    out = make("-n", "cuda-build", "MAX_JOBS=5")
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.replace("\\\n", " ").splitlines() if "setup.py" in line]
    assert "MAX_JOBS=5" in line and "CHIMERA_REQUIRE_EXT=1" in line
    assert "CHIMERA_REQUIRE_EXT=1" in make("-n", "test-cuda").stdout.split("pip install")[0].splitlines()[-1]


def test_cmake_check_installs_cmake_when_missing():
    """Like arm-check's cross compiler: a fresh machine may lack cmake."""
    out = make("-n", "cmake-check")
    assert out.returncode == 0, out.stderr
    assert "command -v cmake" in out.stdout and "install -y -q cmake" in out.stdout


def test_test_ref_runs_where_ci_requires_the_extension():
    """.ci/run exports CHIMERA_REQUIRE_EXT=1, which contradicts CHIMERA_DISABLE_EXT=1."""
    out = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-n", "test-ref"], capture_output=True,
                         text=True, env={**os.environ, "CHIMERA_REQUIRE_EXT": "1"})
    (line,) = [line for line in out.stdout.splitlines() if "CHIMERA_DISABLE_EXT=1" in line]
    assert "CHIMERA_REQUIRE_EXT=0 CHIMERA_DISABLE_EXT=1" in line
