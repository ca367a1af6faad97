"""The CI skip gate (.ci/check-skips): a skip CI does not expect fails the run."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATE = ROOT / ".ci" / "check-skips"

TESTS = '''
import pytest

def test_runs():
    pass

def test_needs_a_gpu():
    pytest.skip("needs a CUDA device")
'''
UNEXPECTED = {
    "missing_package": "def test_missing_package():\n    pytest.importorskip('no_such_module_for_the_gate')\n",
    "marker": "@pytest.mark.skipif(True, reason='Debian packages are not installed')\ndef test_marker():\n    pass\n",
}


def report(tmp_path, source, module="test_case.py"):
    """Run pytest on `source` in a folder of its own; return its --junitxml report."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / module).write_text(source)
    xml = tmp_path / "results.xml"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                          str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: every test skipped
    return xml


def gate(xml):
    return subprocess.run([sys.executable, str(GATE), str(xml)], capture_output=True, text=True)


def test_allowed_skip_passes(tmp_path):
    out = gate(report(tmp_path, TESTS))
    assert out.returncode == 0, out.stderr
    assert "1 skipped, 0 not on the allow-list" in out.stdout


@pytest.mark.parametrize("case", sorted(UNEXPECTED))
def test_unexpected_skip_fails_and_is_named(tmp_path, case):
    out = gate(report(tmp_path, TESTS + "\n" + UNEXPECTED[case]))
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"check-skips: test_case::test_{case}: skipped: ")
    assert "2 skipped, 1 not on the allow-list" in out.stdout


def test_module_level_skip_fails(tmp_path):
    source = "import pytest\npytest.skip('yaml is not installed', allow_module_level=True)\n"
    out = gate(report(tmp_path, source, "test_whole_module.py"))
    assert out.returncode == 1
    assert out.stderr.strip() == "check-skips: test_whole_module: skipped: yaml is not installed"


def test_missing_report_fails(tmp_path):
    out = gate(tmp_path / "absent.xml")
    assert out.returncode == 1 and "no test report" in out.stderr


def test_unreadable_report_or_allow_list_is_one_line(tmp_path):
    """A report pytest left half-written, or a wrong allow-list path: one line, no traceback."""
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuites><testsuite><testcase")
    out = gate(broken)
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"check-skips: {broken}: not a JUnit report")
    xml = report(tmp_path, TESTS)
    out = subprocess.run([sys.executable, str(GATE), str(xml), str(tmp_path / "no-such-list")], capture_output=True,
                         text=True)
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith("check-skips: ") and "no-such-list" in line


XFAIL = '''
import pytest

@pytest.mark.xfail(reason="a known bug, tracked")
def test_known_bug():
    assert False
'''


def test_xfail_that_ran_is_no_skip(tmp_path):
    """junit reports an expected failure as <skipped type="pytest.xfail">, but the test ran."""
    out = gate(report(tmp_path, TESTS + XFAIL))
    assert out.returncode == 0, out.stderr
    assert "1 skipped, 0 not on the allow-list" in out.stdout


def test_xfail_that_did_not_run_is_a_skip(tmp_path):
    source = "import pytest\n\n@pytest.mark.xfail(run=False, reason='crashes')\ndef test_not_run():\n    assert False\n"
    out = gate(report(tmp_path, source))
    assert out.returncode == 1
    assert out.stderr.splitlines() == ["check-skips: test_case::test_not_run: skipped: [NOTRUN] crashes"]
