import os
import signal
import subprocess
import sys
import time

import pytest

from chimera import atomic
from chimera.atomic import OutputExistsError, atomic_write


@pytest.fixture(params=["unnamed", "named"])
def mode(request, monkeypatch):
    if request.param == "named":  # the fallback where O_TMPFILE is unavailable
        monkeypatch.setattr(atomic, "_open_unnamed", lambda folder: None)
    return request.param


def test_appears_complete_and_refuses_to_overwrite(tmp_path, mode):
    path = tmp_path / "sub" / "out.bin"
    with atomic_write(path) as f:
        f.write(b"first")
        assert not path.exists()
    assert path.read_bytes() == b"first"
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_write(path) as f:
            f.write(b"second")
    assert path.read_bytes() == b"first"
    with atomic_write(path, force=True) as f:
        f.write(b"third")
    assert path.read_bytes() == b"third"
    assert sorted(os.listdir(path.parent)) == ["out.bin"]


def test_error_leaves_nothing(tmp_path, mode):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_sigkill_leaves_nothing(tmp_path):
    code = (f"from chimera.atomic import atomic_write\nimport time\n"
            f"with atomic_write({str(tmp_path / 'out.bin')!r}) as f:\n"
            f"    f.write(b'x' * 100000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert os.listdir(tmp_path) == []
