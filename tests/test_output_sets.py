"""`chimera predict`'s outputs of one input as a set: all placed or none, write errors in
one line, inputs refused up front (a channel count the format cannot hold, a damaged rate),
many channels in bounded time."""
import os
import resource
import signal
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from chimera import atomic
from chimera.atomic import OutputExistsError, atomic_writes
from chimera.audio import AudioError
from chimera.separate import MAX_WIENER_CHANNELS, MIN_RATE, Separator, separate_file
from test_separate import ROOT, model_file, noise, run_cli, tiny_model  # noqa: F401 (model_file: a fixture)


@pytest.fixture(params=["unnamed", "named"])
def mode(request, monkeypatch):
    if request.param == "named":  # the fallback where O_TMPFILE is unavailable
        monkeypatch.setattr(atomic, "_open_unnamed", lambda folder: None)
    return request.param


def _listing(folder):
    return {p.name: (p.read_bytes() if p.is_file() else "folder") for p in folder.iterdir()}


@pytest.mark.parametrize("blocked", [0, 1, 2])
def test_a_file_in_the_way_of_any_member_places_none(tmp_path, mode, blocked):
    paths = [tmp_path / f"{k}.bin" for k in range(3)]
    with pytest.raises(OutputExistsError, match=f"{blocked}.bin: exists"):
        with atomic_writes(paths) as files:
            for k, f in enumerate(files):
                f.write(b"ours %d" % k)
            paths[blocked].write_bytes(b"theirs")
    assert _listing(tmp_path) == {f"{blocked}.bin": b"theirs"}


@pytest.mark.parametrize("blocked", [0, 1, 2])
def test_a_failed_forced_set_restores_the_files_it_replaced(tmp_path, mode, blocked):
    paths = [tmp_path / f"{k}.bin" for k in range(3)]
    for k, p in enumerate(paths):
        p.write_bytes(b"old %d" % k)
    with pytest.raises(IsADirectoryError):
        with atomic_writes(paths, force=True) as files:
            for k, f in enumerate(files):
                f.write(b"new %d" % k)
            paths[blocked].unlink()
            paths[blocked].mkdir()  # rename(2) cannot replace it
    want = {f"{k}.bin": b"old %d" % k for k in range(3)}
    want[f"{blocked}.bin"] = "folder"
    assert _listing(tmp_path) == want  # no hidden copies left either


def test_a_complete_set_is_placed_and_leaves_no_hidden_copies(tmp_path, mode):
    paths = [tmp_path / f"{k}.bin" for k in range(3)]
    paths[1].write_bytes(b"old")
    with atomic_writes(paths, force=True) as files:
        for k, f in enumerate(files):
            f.write(b"new %d" % k)
    assert _listing(tmp_path) == {f"{k}.bin": b"new %d" % k for k in range(3)}


class _Blocking(Separator):
    """A Separator that puts `block()` in the way of an output once the separation ends."""
    block = None

    def stream(self, *args, **kwargs):
        inner = super().stream(*args, **kwargs)
        outer = self

        class Stream:
            push = inner.push

            def finish(self):
                yield from inner.finish()
                outer.block()
        return Stream()


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("blocked", ["vocals", "accompaniment"])
def test_predict_writes_all_sources_or_none(tmp_path, force, blocked):
    src = tmp_path / "a.wav"
    sf.write(src, noise(2, 3000).T, 8000)
    out = tmp_path / "sep"
    targets = [out / "vocals.wav", out / "accompaniment.wav"]
    if force:
        out.mkdir()
        for t in targets:
            t.write_bytes(b"before " + t.name.encode())
    sep = _Blocking(tiny_model(), device="cpu", segment=1.0, overlap=0.25)

    def block():  # another program's file (no --force), or a folder --force cannot replace
        victim = out / f"{blocked}.wav"
        if force:
            victim.unlink()
            victim.mkdir()
        else:
            out.mkdir(exist_ok=True)
            victim.write_bytes(b"theirs")
    sep.block = block
    with pytest.raises((AudioError, OSError)) as err:
        separate_file(sep, src, targets=[str(t) for t in targets], force=force)
    want = {f"{blocked}.wav": "folder" if force else b"theirs"}
    if force:  # the other keeps what it held
        other = ({"vocals", "accompaniment"} - {blocked}).pop()
        want[f"{other}.wav"] = b"before " + f"{other}.wav".encode()
    assert _listing(out) == want
    assert isinstance(err.value, AudioError) and str(err.value).startswith(f"{out / blocked}.wav: ")
    assert str(err.value) == f"{out / blocked}.wav: " + ("cannot be written (is a directory)" if force else
                                                          "exists (use --force to overwrite)")


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 2000).T, 8000)
    sep = Separator(tiny_model(), device="cpu")
    with pytest.raises(AudioError) as err:
        separate_file(sep, src, out_dir="/proc/chimera-no-such-folder")
    message = str(err.value)
    assert message.startswith("/proc/chimera-no-such-folder") and ": cannot be written (" in message
    assert "Errno" not in message and "\n" not in message


def _file_size_limit(limit):
    def limited():  # writes past `limit` bytes fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limited


def test_a_write_error_is_one_line_and_leaves_nothing(tmp_path, model_file):
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 24000).T, 8000)   # 48 kB a source as PCM_16
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}
    run = subprocess.run([sys.executable, "-m", "chimera", "predict", str(src), "--model", str(model_file),
                          "--out", str(tmp_path / "sep"), "--quiet"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300, preexec_fn=_file_size_limit(20000))
    assert run.returncode == 1
    assert run.stderr.splitlines() == [f"chimera: error: {tmp_path / 'sep' / 'a'}/vocals.wav: cannot be written "
                                       "(file too large)"]
    assert not (tmp_path / "sep").exists()


def test_a_channel_count_the_format_cannot_hold_is_refused_before_any_work(tmp_path, model_file, capsys,
                                                                          monkeypatch):
    src = tmp_path / "surround.wav"
    sf.write(src, noise(3, 2000).T, 8000)

    def no_work(*args, **kwargs):
        raise AssertionError("separation began")
    monkeypatch.setattr(Separator, "stream", no_work)
    out = run_cli(capsys, "predict", src, "--model", model_file, "--out", tmp_path / "sep", "--format", "mp3")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"chimera: error: {src}: 3 channels cannot be written as mp3: it holds at most 2; "
                                    "wav, aiff, flac, ogg, opus can"]
    assert not (tmp_path / "sep").exists()


def test_more_channels_than_vorbis_holds_are_refused_not_a_crash(tmp_path, model_file):
    src = tmp_path / "array.wav"
    sf.write(src, noise(256, 300).T, 8000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}
    run = subprocess.run([sys.executable, "-m", "chimera", "predict", str(src), "--model", str(model_file),
                          "--out", str(tmp_path / "sep"), "--format", "ogg", "--quiet"], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 1  # libsndfile's Vorbis encoder took 256 channels, then crashed the process
    assert run.stderr.splitlines() == [f"chimera: error: {src}: 256 channels cannot be written as ogg: it holds at "
                                       "most 255; wav, aiff can"]


def test_a_rate_too_low_to_be_audio_is_refused(tmp_path, model_file, capsys):
    src = tmp_path / "slow.wav"
    sf.write(src, noise(1, 32).T, 1)  # 32 samples claiming 32 s
    out = run_cli(capsys, "predict", src, "--model", model_file, "--out", tmp_path / "sep")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"chimera: error: {src}: sample rate 1 Hz is below {MIN_RATE} Hz, the lowest "
                                    "chimera separates (a damaged header?)"]
    assert not (tmp_path / "sep").exists()
    with pytest.raises(ValueError, match=f"below {MIN_RATE} Hz"):
        Separator(tiny_model(), device="cpu").separate(noise(1, 100), MIN_RATE - 1)
    assert Separator(tiny_model(), device="cpu").separate(noise(1, 100), MIN_RATE).shape == (2, 1, 100)


@pytest.mark.parametrize("rate", [8000, 11025])
def test_many_channels_are_each_filtered_alone(rate):
    """Over MAX_WIENER_CHANNELS channels the Wiener filter (whose cost grows with the cube of
    the channels) runs on each channel as on a mono recording, in groups of channels."""
    channels = 2 * MAX_WIENER_CHANNELS + 3
    x = noise(channels, 3000, seed=1)
    sep = Separator(tiny_model(), device="cpu", segment=0.2, overlap=0.05)
    together = sep.separate(x, rate)                                    # (C, channels, L)
    alone = torch.stack([sep.separate(x[c], rate) for c in range(channels)], 1)
    assert together.shape == (2, channels, 3000)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(together.sum(0), torch.from_numpy(x), rtol=0, atol=1e-5)  # shares add up


def test_up_to_the_limit_the_filter_still_works_across_channels():
    x = noise(3, 3000, seed=2)
    x[1] = 0.7 * x[0] + 0.3 * x[1]  # channels that share a source: the filter across them differs
    sep = Separator(tiny_model(), device="cpu")
    together = sep.separate(x, 8000)
    alone = torch.stack([sep.separate(x[c], 8000) for c in range(3)], 1)
    assert (together - alone).abs().max() > 1e-3


def test_an_input_read_error_is_not_blamed_on_an_output(tmp_path, monkeypatch):
    # An OSError while reading the input (a decoder's pipe, a failing disk) was reported as
    # "<first output>: cannot be written"; it is the input's, and nothing is written.
    from chimera import separate
    src = tmp_path / "a.wav"
    sf.write(src, noise(2, 3000).T, 8000)
    out = tmp_path / "sep"
    reads = 0

    def failing_blocks(source, block):
        nonlocal reads
        reads += 1
        if reads > 1:  # the first pass (decoding all once) succeeds, the separating pass fails
            raise OSError(5, "Input/output error")
        yield from orig(source, block)
    orig = separate.read_blocks
    monkeypatch.setattr(separate, "read_blocks", failing_blocks)
    sep = Separator(tiny_model(), device="cpu", segment=1.0, overlap=0.25)
    with pytest.raises(OSError) as err:
        separate_file(sep, src, targets=[str(out / "vocals.wav"), str(out / "accompaniment.wav")])
    assert "cannot be written" not in str(err.value) and "Input/output error" in str(err.value)
    assert not out.exists() or _listing(out) == {}


@pytest.mark.parametrize("tidy", [True, False])
def test_folders_made_for_a_failed_input_are_removed_unless_others_may_write_there(tmp_path, tidy):
    """predict's -j workers and torchrun's ranks pass tidy=False (run() tidies once all are
    done): a folder holding only another process's unnamed output looks empty, and removing
    it made that output fail."""
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 3000).T, 8000)
    sep = _Blocking(tiny_model(), device="cpu", segment=1.0, overlap=0.25)

    def fail():
        raise RuntimeError("separation failed")
    sep.block = fail
    with pytest.raises(RuntimeError, match="separation failed"):
        separate_file(sep, src, out_dir=tmp_path / "sep" / "deeper", tidy=tidy)
    assert sorted(os.listdir(tmp_path)) == (["a.wav"] if tidy else ["a.wav", "sep"])
    if not tidy:
        assert os.listdir(tmp_path / "sep" / "deeper") == ["a"] and os.listdir(tmp_path / "sep" / "deeper" / "a") == []


class _SignalledFile:
    """An output file that sends this process `signum` during its `after`-th write: inside
    libsndfile's callback, as a Ctrl-C or a -j worker's SIGTERM can arrive."""

    def __init__(self, file, signum, after):
        self.file, self.signum, self.writes = file, signum, after
        self.signalled_write_done = False

    def write(self, data):
        self.writes -= 1
        if self.writes == -1:
            os.kill(os.getpid(), self.signum)
            n = self.file.write(data)
            self.signalled_write_done = True  # the handler did not raise inside the callback
            return n
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def _exit_on_sigterm(signum, frame):  # a -j worker's handler, without its SIGALRM fallback
    raise SystemExit(128 + signum)


@pytest.mark.parametrize("signum, exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
@pytest.mark.parametrize("after", [0, 3])
def test_a_signal_inside_libsndfiles_write_is_raised_not_lost(tmp_path, monkeypatch, capfd, signum, exc, after):
    """The handler's exception, raised inside the C callback, was printed by cffi ("Exception
    ignored") and dropped; soundfile then failed an assertion, which predict counted as one
    input's error: a -j worker went on to its next input and Pool.terminate waited for it (a
    Ctrl-C with -j hung, or printed the traceback)."""
    import chimera.separate as separate
    sink = separate._Sink
    files = []
    monkeypatch.setattr(separate, "_Sink", lambda f, t: sink(files.append(_SignalledFile(f, signum, after))
                                                             or files[-1], t))
    before = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    src = tmp_path / "a.wav"
    sf.write(src, noise(2, 24000).T, 8000)
    try:
        with pytest.raises(exc):
            separate_file(Separator(tiny_model(), device="cpu"), src, out_dir=tmp_path / "sep")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "Exception ignored" not in capfd.readouterr().err
    assert any(f.signalled_write_done for f in files)  # it waited until libsndfile's call returned
    assert not (tmp_path / "sep").exists()
