"""chimera.audio: one reader, one error naming the file, one resampler, for every consumer."""
import os
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
