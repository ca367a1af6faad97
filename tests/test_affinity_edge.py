"""Edge inputs of affinity_stats (+ backward) and the DC losses, forward and backward, each
case in a child process (tests/affinity_edge_cases.py): a crash fails that case, not the run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affinity_edge_cases import CASES

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def outcomes():
    """{case: "OK" | reason}. The cases share child processes; a child that dies is blamed for
    the case it was running, and the remaining cases go to a fresh child."""
    results, todo = {}, list(CASES)
    while todo:
        out = subprocess.run([sys.executable, str(HERE / "affinity_edge_cases.py"), *todo], capture_output=True,
                             text=True, cwd=HERE, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        for line in out.stdout.splitlines():
            if line.startswith("CASE "):
                _, name, verdict = line.split(" ", 2)
                results[name] = verdict
        todo = [name for name in todo if name not in results]
        if todo:  # the child died during todo[0]
            results[todo.pop(0)] = f"child process died (exit status {out.returncode}): {out.stderr[-500:]}"
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_edge_input(outcomes, case):
    assert outcomes[case] == "OK", outcomes[case]
