"""The Makefile: `make help` is generated from the `##` comments and lists every target."""
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
