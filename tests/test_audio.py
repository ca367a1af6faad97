"""chimera.audio: one reader, one error naming the file, one resampler, for every consumer."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from chimera.audio import (OUTPUT_CHANNELS, OUTPUT_FORMATS, AudioError, StreamResampler, read_audio, resample,
                           write_audio)
from chimera.evaluate import load_track
from chimera.models import SeparationModel, preset
from chimera.separate import Separator


def _bad(tmp_path, name):
    """A bad `mixture` file of each kind, in a track folder evaluate can read."""
    folder = tmp_path / "data" / "t"
    folder.mkdir(parents=True)
    path = folder / "mixture.wav"
    if name == "empty":
        path.write_bytes(b"")
    elif name == "text":
        path.write_text("this is not audio at all\n" * 10)
    elif name == "nan":
        x = np.zeros(2000, np.float32)
        x[1500] = np.nan
        sf.write(path, x, 8000, subtype="FLOAT")
    elif name == "folder":
        path.mkdir()
    sf.write(folder / "vocals.wav", np.zeros(2000, np.float32), 8000)
    return path


@pytest.mark.parametrize("name,problem", [("missing", "no such file"), ("empty", "empty file"),
                                          ("text", "not a readable audio file"), ("nan", "NaN/Inf sample at 0.188 s"),
                                          ("folder", "is a folder")])
def test_one_message_for_a_bad_file_wherever_it_is_read(tmp_path, name, problem):
    path = _bad(tmp_path, name)
    torch.manual_seed(0)
    model = SeparationModel(preset("dc", "small", hidden=8, layers=1, embedding_dim=2, source_names=["vocals"],
                                   n_sources=1))
    errors = []
    for read in (lambda: read_audio(path),                                                # data sets
                 lambda: Separator(model, device="cpu").separate_file(path, tmp_path / "out"),  # predict
                 lambda: load_track(tmp_path / "data", "t", ["vocals"])):                 # evaluate
        with pytest.raises(AudioError) as info:
            read()
        errors.append(info.value)
    assert {str(e) for e in errors} == {f"{path}: {errors[0].problem}"}
    assert problem in errors[0].problem and errors[0].path == str(path)
    assert not (tmp_path / "out").exists()


def test_resample_along_any_axis_and_in_blocks_agree():
    x = np.random.default_rng(0).standard_normal((44100, 2)).astype(np.float32)
    whole = resample(x, 44100, 16000)
    assert whole.shape == (16000, 2)
    np.testing.assert_array_equal(resample(x.T[None], 44100, 16000, axis=-1)[0].T, whole)
    stream = StreamResampler(44100, 16000, 2)
    blocks = [stream.push(x[i:i + 1000]) for i in range(0, 44100, 1000)] + [stream.finish()]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    same = StreamResampler(8000, 8000, 2)
    np.testing.assert_array_equal(same.push(x[:10]), x[:10])
    assert same.finish().shape == (0, 2)


@pytest.mark.parametrize("ext", ["wav", "aiff", "au"])
def test_a_file_cut_short_is_refused_not_read_shorter(tmp_path, ext):
    """libsndfile quietly shortens such a file to what is there: the separation of a
    download that stopped at a third was a third as long, and said nothing."""
    path = tmp_path / f"cut.{ext}"
    sf.write(path, np.zeros(3000, np.float32), 8000, subtype="PCM_16")
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 3])
    with pytest.raises(AudioError, match=rf"cut\.{ext}: truncated: it holds \d+ of the 600\d bytes of samples its "
                                         r"header promises \(\d+ missing\)$"):
        read_audio(path)


def test_a_size_left_unknown_by_a_streaming_writer_is_not_truncation(tmp_path):
    path = tmp_path / "live.wav"
    sf.write(path, np.full(1000, 0.25, np.float32), 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[4:8] = data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # RIFF and data sizes: "until the end"
    path.write_bytes(bytes(data))
    x, rate = read_audio(path)
    assert rate == 8000 and x.shape == (1000, 1) and np.all(x == 0.25)


def test_a_pipe_is_refused_as_not_a_file(tmp_path):
    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    with pytest.raises(AudioError, match=r"pipe\.wav: not a regular file \(a pipe or a device\)"):
        read_audio(path)  # was "empty file (0 bytes)"; nor may it block waiting for a writer


def _probe_write(ext, channels):
    """Write a few samples of `channels` channels as `ext` in a process of its own (a write
    libsndfile takes and then crashes on must not take the tests along): "ok", "refused" or
    "crashed"."""
    major, subtype = OUTPUT_FORMATS[ext]
    code = textwrap.dedent(f"""
        import io, numpy as np, soundfile as sf
        try:
            with sf.SoundFile(io.BytesIO(), "w", 48000, {channels}, {subtype!r}, format={major!r}) as f:
                f.write(np.zeros((2000, {channels}), np.float32))
        except Exception:
            print("refused")
        else:
            print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return run.stdout.strip() if run.returncode == 0 else "crashed"


@pytest.mark.parametrize("ext", sorted(OUTPUT_CHANNELS))
def test_output_channel_limits_are_libsndfiles(ext):
    """OUTPUT_CHANNELS says what this libsndfile writes: the limit, and not one more."""
    limit = OUTPUT_CHANNELS[ext]
    assert _probe_write(ext, limit) == "ok"
    assert _probe_write(ext, limit + 1) in ("refused", "crashed")


def test_write_audio_refuses_nan_before_making_folders(tmp_path):
    data = np.zeros((100, 2), np.float32)
    data[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf samples to .*out.wav"):
        write_audio(tmp_path / "new" / "out.wav", data, 16000)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs ffmpeg")
def test_ffmpeg_reads_relative_names_with_a_colon_or_a_leading_dash(tmp_path, monkeypatch):
    """ffprobe took "-take.m4a" for an option and ffmpeg "take:2.m4a" for a protocol:
    both files were refused as unreadable."""
    x = (0.5 * np.sin(np.arange(8000) / 7)).astype(np.float32)
    sf.write(tmp_path / "plain.wav", x, 16000)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "plain.wav"), "-c:a", "aac",
                    str(tmp_path / "plain.m4a")], check=True)
    want, rate = read_audio(tmp_path / "plain.m4a")
    monkeypatch.chdir(tmp_path)
    for name in ("-take.m4a", "take:2.m4a"):
        shutil.copy("plain.m4a", name)
        got, got_rate = read_audio(name)
        assert got_rate == rate == 16000
        np.testing.assert_array_equal(got, want)
    with pytest.raises(AudioError, match=r"^-bad\.m4a: not a readable audio file \(libsndfile: .+; ffmpeg: "
                                         r"Invalid data found when processing input\)$"):
        pathlib.Path("-bad.m4a").write_text("not audio\n" * 10)
        read_audio("-bad.m4a")


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3"])
def test_write_audio_float_to_a_format_without_float(tmp_path, ext):
    """The default FLOAT subtype made every float write to these formats fail."""
    x = (0.5 * np.sin(np.arange(8000) / 7)).astype(np.float32)
    write_audio(tmp_path / f"out.{ext}", x, 16000)
    y, rate = read_audio(tmp_path / f"out.{ext}")
    assert rate == 16000 and y.shape == (8000, 1)
    if ext == "flac":  # lossless: what PCM_16 holds of x
        np.testing.assert_array_equal(y[:, 0], np.round(x * 32768) / 32768)


def test_a_refused_write_names_the_file_and_leaves_nothing(tmp_path):
    """libsndfile's refusals did not name the file (LibsndfileError, or 'Invalid combination
    of format, subtype and endian'), and the mp3 one left an empty file behind."""
    x = np.zeros(800, np.float32)
    path = tmp_path / "out.mp3"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot write it as MPEG_LAYER_III at 7000 Hz "
                                         r"\(MPEG-1/2/2.5 only supports sample rates of 8000, .*\)$"):
        write_audio(path, x, 7000)
    assert not path.exists()
    path = tmp_path / "out.wav"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot write it as ULAW at 8000 Hz "):
        write_audio(path, np.zeros((10, 2, 2), np.float32), 8000, subtype="ULAW")
    assert os.listdir(tmp_path) == []
    # over an existing file: refused, the file as it was (libsndfile truncated it first)
    path = tmp_path / "kept.mp3"
    write_audio(path, 0.1 * np.ones(8000, np.float32), 8000)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="cannot write it as MPEG_LAYER_III at 7000 Hz"):
        write_audio(path, x, 7000)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["kept.mp3"]
    write_audio(path, x, 8000)  # and a write that works replaces it
    assert path.read_bytes() != before and os.listdir(tmp_path) == ["kept.mp3"]


def test_a_flac_cut_short_is_an_audio_error_naming_it(tmp_path):
    """read_audio's seek raised libsndfile's bare 'Internal psf_fseek() failed.' (no file
    name, not an AudioError) for a FLAC download that stopped early."""
    path = tmp_path / "cut.flac"
    x = (0.1 * np.random.default_rng(0).standard_normal(30000)).astype(np.float32)
    sf.write(path, x, 8000, subtype="PCM_16")
    whole = path.read_bytes()
    for cut in (44, 1000):
        path.write_bytes(whole[:cut])
        for start in (0, 100):
            with pytest.raises(AudioError, match=rf"^{re.escape(str(path))}: (read|seek to sample) .*failed"):
                read_audio(path, start)
    with pytest.raises(ValueError, match="start must be >= 0, got -5"):
        read_audio(tmp_path / "cut.flac", -5)


def test_a_wav_cut_after_its_header_is_truncated_not_silent(tmp_path):
    """Was 'the audio has no samples', as for a file written empty."""
    path = tmp_path / "cut.wav"
    sf.write(path, np.zeros(3000, np.float32), 8000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:44])
    with pytest.raises(AudioError, match=r"cut\.wav: truncated: it holds 0 of the 6000 bytes of samples its header "
                                         r"promises \(6000 missing\)$"):
        read_audio(path)


def test_a_missing_folder_is_called_a_folder(tmp_path):
    # `chimera predict nodir/` said "nodir/: no such file"
    with pytest.raises(AudioError, match=r"nodir/: no such folder$"):
        read_audio(str(tmp_path / "nodir") + "/")
    with pytest.raises(AudioError, match=r"nofile: no such file$"):
        read_audio(tmp_path / "nofile")
