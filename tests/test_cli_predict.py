"""`chimera predict` as demucs users expect it: names and clashes, flags, formats, ffmpeg
inputs, and the inputs shared among processes (-j, torchrun)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from chimera.audio import AudioError, FfmpegFile, read_audio, resample
from chimera.cli import build_parser
from chimera.parallel import balanced_shares
from chimera.separate import Separator
from test_separate import model_file, noise, run_cli, tiny_model  # noqa: F401 (model_file: a fixture)

ROOT = Path(__file__).resolve().parents[1]


def write(path, x, rate=8000, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.T, rate, **kw)
    return path


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def test_clashing_names_are_refused_before_any_work_and_relpath_keeps_them_apart(tmp_path, model_file, capsys,
                                                                                 one_thread):
    album = tmp_path / "album"
    write(album / "cd1" / "01.flac", noise(1, 2000))
    write(album / "cd2" / "01.flac", noise(1, 2000, seed=1))
    out = run_cli(capsys, "predict", album, "--model", model_file, "-o", tmp_path / "sep", "--quiet")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # one per output file that both would write
    for line, stem in zip(sorted(lines), ("accompaniment", "vocals")):
        assert line.startswith(f"chimera: error: {tmp_path / 'sep' / '01' / stem}.wav: would be written for "
                               f"{album / 'cd1' / '01.flac'} and {album / 'cd2' / '01.flac'}"), line
        assert "{relpath}" in line
    assert not (tmp_path / "sep").exists()  # nothing done
    out = run_cli(capsys, "predict", album, "--model", model_file, "-o", tmp_path / "sep", "--quiet",
                  "--filename", "{relpath}/{stem}.{ext}")
    assert out.returncode == 0, out.stderr
    assert files_under(tmp_path / "sep") == ["cd1/01/accompaniment.wav", "cd1/01/vocals.wav",
                                             "cd2/01/accompaniment.wav", "cd2/01/vocals.wav"]


def test_trackext_field_and_model_subfolder(tmp_path, model_file, capsys, one_thread):
    a_wav, a_flac = write(tmp_path / "a.wav", noise(1, 2000)), write(tmp_path / "a.flac", noise(1, 2000, seed=2))
    out = run_cli(capsys, "predict", a_wav, a_flac, "-n", model_file, "-o", tmp_path / "sep", "--model-subfolder",
                  "--filename", "{track}.{trackext}/{stem}.{ext}", "--format", "flac")
    assert out.returncode == 0, out.stderr
    assert files_under(tmp_path / "sep") == ["tiny/a.flac/accompaniment.flac", "tiny/a.flac/vocals.flac",
                                             "tiny/a.wav/accompaniment.flac", "tiny/a.wav/vocals.flac"]
    assert f"{a_wav} -> {tmp_path / 'sep' / 'tiny' / 'a.wav' / 'vocals.flac'}" in out.stdout
    out = run_cli(capsys, "predict", a_wav, "-n", model_file, "-o", tmp_path / "x", "--filename", "{name}.wav")
    assert out.returncode == 2 and "'name'" in out.stderr and "{relpath}" in out.stderr


def test_a_bad_subtype_is_refused_once_before_any_work(tmp_path, model_file, capsys, one_thread):
    a, b = write(tmp_path / "a.wav", noise(1, 2000)), write(tmp_path / "b.wav", noise(1, 2000, seed=2))
    out = run_cli(capsys, "predict", a, b, "-n", model_file, "-o", tmp_path / "sep", "--subtype", "FOO")
    assert out.returncode == 2 and out.stderr.count("cannot hold subtype FOO") == 1, out.stderr
    assert not (tmp_path / "sep").exists()


def test_flags_demucs_users_type():
    parser = build_parser()
    a = parser.parse_args(["predict", "x.wav", "-o", "o", "-d", "cpu", "-j", "3", "-v", "-n", "m.pt"])
    assert (a.out, a.device, a.jobs, a.verbose, a.model) == ("o", "cpu", 3, 1, "m.pt")
    for clash in (["--int24", "--float32"], ["--int24", "--subtype", "PCM_16"], ["--float32", "--subtype", "FLOAT"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["predict", "x.wav", *clash])
    e = parser.parse_args(["evaluate", "data", "-j", "2", "-d", "cpu", "-n", "m.pt"])
    assert (e.jobs, e.device, e.model) == (2, "cpu", "m.pt")


def test_progress_counts_seconds_of_audio(tmp_path, capsys):
    src = write(tmp_path / "a.wav", noise(1, 3 * 8000 + 400))  # 3.05 s
    Separator(tiny_model(), device="cpu").separate_file(src, tmp_path / "sep", progress=True)
    err = capsys.readouterr().err
    assert re.search(r"a\.wav: +\d+%\|.*\| [0-9.]+/3\.0 s of audio", err), err


@pytest.mark.parametrize("ext,rate,want_rate", [("opus", 44100, 48000), ("opus", 16000, 16000),
                                                ("mp3", 8000, 8000), ("mp3", 96000, 48000)])
def test_opus_and_mp3_outputs_at_a_rate_they_hold(tmp_path, ext, rate, want_rate):
    t = np.arange(rate) / rate  # 1 s of stereo tones: a codec keeps them (unlike white noise at 8 kHz)
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t),
                  0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    src = write(tmp_path / "in.wav", x, rate, subtype="FLOAT")
    sep = Separator(tiny_model(), device="cpu")
    paths = sep.separate_file(src, tmp_path / "sep", ext=ext)
    lossless = sep.separate_file(src, tmp_path / "ref", subtype="FLOAT")
    for path, ref_path in zip(paths, lossless):
        assert path.endswith(f".{ext}")
        got, got_rate = sf.read(path, always_2d=True)
        assert got_rate == want_rate and got.shape[1] == 2
        assert abs(got.shape[0] - want_rate) <= want_rate // 20   # 1 s, give or take codec padding
        ref = resample(sf.read(ref_path, dtype="float32", always_2d=True)[0], rate, want_rate)
        n = min(len(ref), len(got))  # libsndfile removes the codecs' delay: no shift to search
        assert np.corrcoef(got[:n].ravel(), ref[:n].ravel())[0, 1] > 0.99  # measured 0.997 to 0.99999


def test_files_libsndfile_cannot_read_go_through_ffmpeg(tmp_path):  # ffmpeg: installed by make (system-deps)
    wav = write(tmp_path / "in.wav", noise(2, 16000), 16000)
    m4a = tmp_path / "in.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "96k", str(m4a)], check=True)
    with pytest.raises(Exception):
        sf.info(m4a)  # libsndfile cannot
    decoded = tmp_path / "decoded.wav"  # what ffmpeg itself makes of it
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(m4a), "-c:a", "pcm_f32le", str(decoded)], check=True)
    want, rate = sf.read(decoded, dtype="float32", always_2d=True)
    got, got_rate = read_audio(m4a)
    assert got_rate == rate == 16000
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_audio(m4a, start=5000, frames=3000)[0], want[5000:8000])  # seek
    with FfmpegFile(m4a) as f:
        assert (f.frames, f.channels, f.samplerate) == (len(want), 2, 16000)
    sep = Separator(tiny_model(), device="cpu")
    out = sep.separate_file(m4a, tmp_path / "sep", subtype="FLOAT")
    ref = sep.separate_file(decoded, tmp_path / "ref", subtype="FLOAT")
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(sf.read(a)[0], sf.read(b)[0])
    (tmp_path / "text.m4a").write_text("not audio\n" * 20)
    with pytest.raises(AudioError, match=r"text\.m4a: not a readable audio file \(libsndfile: Format not "
                                         r"recognised; ffmpeg: .+\)$"):
        read_audio(tmp_path / "text.m4a")


def test_shares_are_balanced_and_cover_every_input_once():
    sizes = [50, 10, 10, 10, 10, 10, 1, 1]
    shares = balanced_shares(sizes, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(sizes)))
    loads = sorted(sum(sizes[i] for i in s) for s in shares)
    assert loads == [22, 30, 50]  # the big file alone; the rest as evenly as whole files allow
    assert balanced_shares(sizes, 3) == shares and all(s == sorted(s) for s in shares)
    assert balanced_shares([5, 5], 4) == [[0], [1], [], []]


def _sharded_album(tmp_path):
    """Three equal good files and a bad one that the balanced shares give to the second
    process (sizes 3S, S... -> shares [good0, good2] and [good1, bad])."""
    album = tmp_path / "album"
    good = [write(album / f"{k}.wav", noise(1, 4000, seed=k)) for k in range(3)]
    (album / "zz-bad.wav").write_text("not audio\n")
    return album, good


def _check_sharded_run(run, tmp_path, album, good, tag):
    assert run.returncode != 0, run.stderr               # the failure on one process counts for all
    for path in good:                                    # each good file written, by exactly one process
        [line] = [ln for ln in run.stdout.splitlines() if f"{path} ->" in ln]
        assert re.match(rf"\[{tag} \d\] ", line), line
    assert {ln.split("]")[0] for ln in run.stdout.splitlines()} == {f"[{tag} 0", f"[{tag} 1"}  # both worked
    assert files_under(tmp_path / "sep") == sorted(f"{k}/{s}.wav" for k in range(3)
                                                  for s in ("accompaniment", "vocals"))
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("chimera: error:")]
    assert errors == [f"chimera: error: {album / 'zz-bad.wav'}: not a readable audio file (Format not recognised)",
                      "chimera: error: 1 of 4 inputs failed"], run.stderr


def _env():
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}, "OMP_NUM_THREADS": "1"}


def test_jobs_share_the_inputs_among_processes(tmp_path, model_file):
    album, good = _sharded_album(tmp_path)
    run = subprocess.run([sys.executable, "-m", "chimera", "predict", str(album), "--model", str(model_file), "-o",
                          str(tmp_path / "sep"), "-j", "2"], capture_output=True, text=True, cwd=ROOT, env=_env(),
                         timeout=600)
    assert "Traceback" not in run.stderr, run.stderr
    assert "leaked semaphore" not in run.stderr, run.stderr  # the pool closed, not terminated (was: 1 run in 2)
    _check_sharded_run(run, tmp_path, album, good, "job")


def _own_group_with_default_sigint():  # as in a terminal, even when pytest runs with SIGINT ignored
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_with_jobs_is_one_line_and_leaves_nothing(tmp_path, model_file):
    # the workers were killed by the pool's SIGTERM: the folders of the outputs they were
    # writing stayed, and their semaphores (tqdm's lock) were reported after the error line
    # as "leaked semaphore objects"
    inputs = [write(tmp_path / f"long{k}.wav", noise(2, 8000 * 300, seed=k)) for k in range(2)]
    proc = subprocess.Popen([sys.executable, "-m", "chimera", "predict", *map(str, inputs), "-n", str(model_file),
                             "-o", str(tmp_path / "sep"), "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, env=_env(), preexec_fn=_own_group_with_default_sigint)
    started = time.monotonic()
    while not all((tmp_path / "sep" / f"long{k}").is_dir() for k in range(2)):  # both workers writing
        assert proc.poll() is None and time.monotonic() - started < 120, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines() == ["chimera: error: interrupted"], err.decode()
    # the folders made are removed once no worker writes (each worker removing its own had
    # left sep when the other had made it, and could remove a folder the other wrote in)
    assert not (tmp_path / "sep").exists()


def test_torchrun_ranks_share_the_inputs(tmp_path, model_file):
    album, good = _sharded_album(tmp_path)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "chimera", "predict", str(album), "--model", str(model_file), "-o",
                          str(tmp_path / "sep"), "-d", "cpu"], capture_output=True, text=True, cwd=ROOT, env=_env(),
                         timeout=600)
    _check_sharded_run(run, tmp_path, album, good, "rank")
