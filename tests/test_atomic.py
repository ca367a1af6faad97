import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from chimera import atomic
from chimera.atomic import PARTIAL_PREFIX, OutputExistsError, atomic_write


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


def test_target_appearing_during_the_write_is_kept(tmp_path, mode):
    """Past the up-front check: the final step itself must refuse to replace a file that
    another writer created meanwhile (linkat's EEXIST, or link(2) in the fallback)."""
    path = tmp_path / "out.bin"
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_write(path) as f:
            f.write(b"ours")
            path.write_bytes(b"theirs")
    assert path.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_error_leaves_nothing(tmp_path, mode):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def _killed_writer(tmp_path, force, named, stop_before_rename):
    """Run a writer in a subprocess and SIGKILL it at a chosen point: while writing, or
    (force) after the finished file got its hidden name but before the rename over the
    old file. Return once it is dead."""
    code = textwrap.dedent(f"""
        import os, time
        from chimera import atomic
        if {named}:
            atomic._open_unnamed = lambda folder: None
        if {stop_before_rename}:
            def replace(src, dst):
                print("named", flush=True)
                time.sleep(60)
            os.replace = replace
        with atomic.atomic_write({str(tmp_path / 'out.bin')!r}, force={force}) as f:
            f.write(b"new" * 1000)
            f.flush()
            if not {stop_before_rename}:
                print("writing", flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == ("named" if stop_before_rename else "writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.05)


def test_sigkill_leaves_nothing(tmp_path):
    _killed_writer(tmp_path, force=False, named=False, stop_before_rename=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("stop_before_rename", [False, True])
def test_sigkill_during_an_overwrite_keeps_the_old_file_and_the_next_write_cleans_up(tmp_path, named,
                                                                                      stop_before_rename):
    (tmp_path / "out.bin").write_bytes(b"old")
    _killed_writer(tmp_path, force=True, named=named, stop_before_rename=stop_before_rename)
    assert (tmp_path / "out.bin").read_bytes() == b"old"
    with atomic_write(tmp_path / "other.bin") as f:  # any later write in the folder
        f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == ["other.bin", "out.bin"]


def test_partials_of_live_or_foreign_writers_are_kept(tmp_path):
    live = tmp_path / f"{PARTIAL_PREFIX}{socket.gethostname()}.{os.getpid()}.abc123"
    foreign = tmp_path / f"{PARTIAL_PREFIX}some-other-host.1.abc123"
    unknown = tmp_path / f"{PARTIAL_PREFIX}0123456789ab"  # an older writer's naming: not ours to judge
    for p in (live, foreign, unknown):
        p.write_bytes(b"partial")
    with atomic_write(tmp_path / "out.bin") as f:
        f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == sorted(["out.bin", live.name, foreign.name, unknown.name])


def test_a_folder_in_the_way_is_refused_before_writing(tmp_path, mode):
    path = tmp_path / "out.wav"
    path.mkdir()
    for force in (False, True):
        with pytest.raises(IsADirectoryError, match=r"out\.wav: is a folder, not a file name$"):
            with atomic_write(path, force=force) as f:
                pytest.fail("writing began")  # pragma: no cover
    assert os.listdir(tmp_path) == ["out.wav"] and path.is_dir()


def test_a_failed_replace_leaves_no_partial_file(tmp_path, mode):
    """A folder appearing at the target during a --force write: the rename over it fails,
    and the finished copy's hidden name must not stay behind."""
    path = tmp_path / "out.wav"
    with pytest.raises(IsADirectoryError):
        with atomic_write(path, force=True) as f:
            f.write(b"data")
            path.mkdir()
    assert os.listdir(tmp_path) == ["out.wav"] and path.is_dir()


def test_folders_to_make_and_remove_empty_folders(tmp_path):
    (tmp_path / "old").mkdir()
    paths = [tmp_path / "old" / "new" / "deeper" / "a.bin", tmp_path / "old" / "new" / "deeper" / "b.bin",
             tmp_path / "old" / "new" / "c.bin", tmp_path / "other" / "d.bin", tmp_path / "e.bin"]
    made = atomic.folders_to_make(paths)
    assert made == [str(tmp_path / "old" / "new" / "deeper"), str(tmp_path / "old" / "new"), str(tmp_path / "other")]
    assert atomic.existing_ancestor(paths[0]) == str(tmp_path / "old")
    for f in made:
        os.makedirs(f, exist_ok=True)
    (tmp_path / "old" / "new" / "c.bin").write_bytes(b"kept")
    atomic.remove_empty_folders(made)
    assert sorted(os.listdir(tmp_path)) == ["old"] and os.listdir(tmp_path / "old" / "new") == ["c.bin"]
