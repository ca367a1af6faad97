"""chimera.Separator and `chimera predict`: segmenting, streaming, files, bad input, the Python API."""
import inspect
import logging
import os
import re
import signal as os_signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from chimera import signal
from chimera.cli import build_parser, main
from chimera.models import SeparationModel, preset, save_checkpoint
from chimera.separate import Separator
from chimera.stream import SegmentPlan
from testutil import cuda

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(seed=0, name="chimerapp"):
    torch.manual_seed(seed)
    cfg = preset(name, "small", hidden=16, layers=1, embedding_dim=4,
                 stft=dict(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann"),
                 source_names=["vocals", "accompaniment"])
    return SeparationModel(cfg).eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, tiny_model())
    return path


def noise(channels, n, seed=0):
    return (np.random.default_rng(seed).standard_normal((channels, n)) * 0.1).astype(np.float32)


def separate_in_memory_reference(model, x, segment, overlap):
    """Independent statement of what the streamed engine must produce at the model rate:
    every segment's spectra, cross-faded on the global frame grid, one inverse STFT."""
    st = model.stft
    hop = st.hop_length
    seg = int(round(segment * st.sample_rate / hop)) * hop
    # the frames within n_fft/2 of a segment's ends see its padding: weight 0 there, and the
    # overlap is at least those of both segments (0 asked: n_fft's worth)
    edge = -(-st.n_fft // (2 * hop))
    ovl = max(int(round(overlap * st.sample_rate / hop)), 2 * edge) * hop
    step = seg - ovl
    L = x.shape[-1]
    n_seg = 1 + int(np.ceil(max(0, L - seg) / step))
    total = (n_seg - 1) * step + seg
    padded = torch.zeros(x.shape[0], total)
    padded[:, :L] = torch.from_numpy(x)
    frames = total // hop + 1
    acc = None
    weight = torch.zeros(frames, dtype=torch.float64)
    shared = ovl // hop + 1
    inner = shared - 2 * edge
    ramp = torch.linspace(0.5 / inner, 1 - 0.5 / inner, inner, dtype=torch.float64)
    ramp = torch.cat([torch.zeros(edge, dtype=torch.float64), ramp, torch.ones(edge, dtype=torch.float64)])
    for k in range(n_seg):
        with torch.no_grad():
            est = model(padded[:, k * step:k * step + seg]).estimates.to(torch.complex128)
        w = torch.ones(seg // hop + 1, dtype=torch.float64)
        if k > 0:
            w[:shared] = ramp
        if k + 1 < n_seg:
            w[-shared:] = 1 - ramp
        if acc is None:
            acc = torch.zeros(*est.shape[:-1], frames, dtype=torch.complex128)
        acc[..., k * step // hop:k * step // hop + w.numel()] += est * w
        weight[k * step // hop:k * step // hop + w.numel()] += w
    assert torch.allclose(weight, torch.ones_like(weight))
    win = model.window.to(torch.float64)
    return signal.istft(acc, st.n_fft, hop, win, center=True, length=L).numpy()


@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_streamed_engine_equals_segments_in_memory(overlap):
    model = tiny_model()
    x = noise(2, 8000 * 3 + 123)
    sep = Separator(model, segment=1.0, overlap=overlap, device="cpu", batch_size=3, wiener_iters=0)
    got = sep.separate(x, 8000).numpy().transpose(1, 0, 2)    # (C, channels, L) -> (channels, C, L)
    want = separate_in_memory_reference(model, x, 1.0, overlap)
    assert got.shape == (2, 2, x.shape[1])
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("overlap", [0.0, 0.01, 0.25])
@pytest.mark.parametrize("wiener", [0, 1])
def test_segment_joins_are_exact_when_the_masks_add_up_to_one(wiener, overlap):
    # softmax masks (chimera preset), or any masks after the Wiener filter, partition the
    # mixture's STFT: the sources then add up to the input across segment joins too
    model = tiny_model(name="chimera" if wiener == 0 else "chimerapp")
    x = noise(2, 8000 * 3 + 123, seed=3)
    # (an overlap shorter than n_fft, 0 included, is planned as n_fft: shorter ones clicked)
    y = Separator(model, segment=1.0, overlap=overlap, device="cpu", wiener_iters=wiener).separate(x, 8000)
    np.testing.assert_allclose(y.sum(0).numpy(), x, atol=2e-5, rtol=0)


def test_segment_plan_refuses_what_it_cannot_plan():
    st = tiny_model().stft
    for segment in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="segment must be a positive number of seconds"):
            SegmentPlan.from_seconds(st, segment, 0.0, 1)
    with pytest.raises(ValueError, match="overlap .* must be between 0 and half the segment") as refused:
        SegmentPlan.from_seconds(st, 1.0, 0.6, 1)
    # the bound it names is the bound (it named the segment as "half the segment")
    most = float(re.search(r"at most ([0-9.]+) s", str(refused.value)).group(1))
    SegmentPlan.from_seconds(st, 1.0, most, 1)
    with pytest.raises(ValueError, match="half the segment"):
        SegmentPlan.from_seconds(st, 1.0, most + 2 * st.hop_length / st.sample_rate, 1)
    plan = SegmentPlan.from_seconds(st, 1.0, 0.0, 1)
    assert plan.shared > 2 * plan.edge and plan.segment - plan.step == st.n_fft


@pytest.mark.parametrize("method", ["mask", "kmeans"])
def test_single_segment_equals_separate_batch(method):
    # one segment: the streamed engine (predict, evaluate) gives what validation scores
    model = tiny_model()
    x = noise(1, 4000)
    sep = Separator(model, segment=10.0, device="cpu", method=method)
    got = sep.separate(x[0], 8000).numpy()
    want = sep.separate_batch(torch.from_numpy(x[0]).unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("method", ["mask", "kmeans"])
@pytest.mark.parametrize("misi", [0, 1])
def test_silent_and_subnormal_stretches_separate_to_finite_sources(method, misi):
    # a stereo file whose second channel goes silent for a whole segment, and a stretch of
    # subnormal samples: k-means once failed on the silent channel's segment (no bin
    # active), MISI turned subnormal bins into NaN
    model = tiny_model()
    x = noise(2, 8000 * 4, seed=5)
    x[:, 4000:12000] = 1e-41
    x[1, 16000:] = 0.0
    y = Separator(model, segment=1.0, overlap=0.25, device="cpu", method=method, misi_iters=misi).separate(x, 8000)
    assert y.shape == (2, 2, x.shape[1]) and torch.isfinite(y).all()
    # past the segment that still saw it active (the Wiener filter's spatial model is per
    # segment), the silent channel stays silent
    assert y[:, 1, 20000:].abs().max() < 1e-4 * np.abs(x).max()


TINY = dict(hidden=16, layers=2, stft=dict(sample_rate=8000, n_fft=128, hop_length=32))


def test_separate_batch_shapes_methods_and_mode():
    model = SeparationModel(preset("chimera", **TINY))  # softmax masks sum to one
    model.train()
    mix = torch.randn(2, 3, 900)
    y = Separator(model, device="cpu").separate_batch(mix)
    assert y.shape == (2, 3, 2, 900) and model.training
    torch.testing.assert_close(y.sum(-2), mix, atol=1e-4, rtol=1e-4)
    assert Separator(model, device="cpu").separate_batch(mix[0, 0]).shape == (2, 900)
    k = Separator(model, device="cpu", method="kmeans").separate_batch(mix[0])
    assert k.shape == (3, 2, 900)
    torch.testing.assert_close(k.sum(-2), mix[0], atol=1e-4, rtol=1e-4)  # binary masks partition the bins
    assert Separator(model, device="cpu", misi_iters=2).separate_batch(mix[0]).shape == (3, 2, 900)
    dc = SeparationModel(preset("dc", **TINY))
    assert Separator(dc, device="cpu").separate_batch(mix[0]).shape == (3, 2, 900)  # defaults to k-means
    with pytest.raises(ValueError, match="no mask head"):
        Separator(dc, device="cpu", method="mask")
    with pytest.raises(ValueError, match="unknown method"):
        Separator(model, device="cpu", method="ica")


def test_separate_batch_keeps_the_input_dtype_and_rejects_integers():
    sep = Separator(SeparationModel(preset("chimerapp", **TINY)).eval(), device="cpu")
    assert sep.separate_batch(torch.randn(1, 900).double()).dtype == torch.float64
    with pytest.raises(TypeError, match="floating"):
        sep.separate_batch(torch.zeros(900, dtype=torch.int16))


def test_file_equals_in_memory_and_blocks_do_not_matter(tmp_path):
    model = tiny_model()
    x = noise(2, 44100 * 2 + 17)
    src = tmp_path / "in.wav"
    sf.write(src, x.T, 44100, subtype="FLOAT")
    sep = Separator(model, segment=0.5, overlap=0.1, device="cpu", batch_size=2)
    want = sep.separate(x, 44100).numpy()
    for block in (0.05, 0.7):
        out = sep.separate_file(src, tmp_path / f"out{block}", subtype="FLOAT", clip="none", block_seconds=block)
        got = np.stack([sf.read(p, always_2d=True)[0].T for p in out])  # (C, channels, L)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_clipping_a_loud_input_is_said_not_silent(tmp_path, caplog):
    model = tiny_model()
    sep = Separator(model, segment=0.5, overlap=0.1, device="cpu")
    for name, gain in (("quiet.wav", 1.0), ("loud.wav", 30.0)):
        sf.write(tmp_path / name, (gain * noise(2, 8000)).T, 8000, subtype="FLOAT")
    caplog.set_level("WARNING", logger="chimera.separate")
    kept = sep.separate_file(tmp_path / "loud.wav", tmp_path / "a", subtype="FLOAT", clip="none")
    beyond = sum(int((np.abs(sf.read(p)[0]) > 1.0).sum()) for p in kept)
    assert beyond > 0 and not caplog.records  # kept as they are: nothing to say
    sep.separate_file(tmp_path / "quiet.wav", tmp_path / "b")
    assert not caplog.records
    loud = sep.separate_file(tmp_path / "loud.wav", tmp_path / "c")  # PCM_16, clamped
    assert len(caplog.records) == 1 and max(np.abs(sf.read(p)[0]).max() for p in loud) <= 1.0
    message = caplog.records[0].getMessage()
    assert "loud.wav" in message and f" {beyond} output samples" in message and "--clip-mode none" in message
    # an integer format clips them even with clip="none": said too (it was silent)
    caplog.clear()
    cut = sep.separate_file(tmp_path / "loud.wav", tmp_path / "d", subtype="PCM_16", clip="none")
    assert max(np.abs(sf.read(p)[0]).max() for p in cut) <= 1.0
    [record] = caplog.records
    assert f" {beyond} output samples" in record.getMessage() and "clipped by the PCM_16 format" in record.getMessage()


def predict(*args, cwd=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}
    return subprocess.run([sys.executable, "-m", "chimera", "predict", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def run_cli(capsys, *args):
    """`chimera ARGS` in this process (no interpreter start-up, seconds faster than
    :func:`predict`): a CompletedProcess with the exit status and what it printed."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    finally:  # the CLI's handler writes to this test's captured stderr: leave no trace
        logger = logging.getLogger("chimera")
        for h in [h for h in logger.handlers if getattr(h, "_chimera_cli", False)]:
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


@pytest.mark.parametrize("rate,channels,seconds", [(8000, 1, 1.3), (16000, 2, 0.7), (44100, 6, 0.4),
                                                   (48000, 2, 0.5)])
def test_predict_keeps_length_channels_and_rate(tmp_path, model_file, rate, channels, seconds, capsys):
    n = int(rate * seconds)
    src = tmp_path / "mix.flac"
    sf.write(src, noise(channels, n).T, rate)
    out = run_cli(capsys, "predict", src, "--model", model_file, "--out", tmp_path / "sep", "--segment", "0.5",
                  "--overlap", "0.1", "--quiet")
    assert out.returncode == 0, out.stderr
    for name in ("vocals", "accompaniment"):
        data, sr = sf.read(tmp_path / "sep" / "mix" / f"{name}.wav", always_2d=True)
        assert sr == rate and data.shape == (n, channels) and np.isfinite(data).all()


def test_valid_edge_cases_succeed(tmp_path, model_file, capsys):
    cases = {"silence.wav": (np.zeros((2, 8000), np.float32), 16000),
             "tiny.wav": (noise(1, 50), 8000),               # shorter than one STFT frame
             "one.wav": (noise(1, 1), 44100)}
    for name, (x, rate) in cases.items():
        sf.write(tmp_path / name, x.T, rate)
    out = run_cli(capsys, "predict", *(tmp_path / n for n in cases), "--model", model_file, "--out", tmp_path / "sep",
                  "--quiet")
    assert out.returncode == 0, out.stderr
    for name, (x, rate) in cases.items():
        data, sr = sf.read(tmp_path / "sep" / Path(name).stem / "vocals.wav", always_2d=True)
        assert sr == rate and data.shape == x.T.shape and np.isfinite(data).all()
    silent, _ = sf.read(tmp_path / "sep" / "silence" / "accompaniment.wav")
    assert np.abs(silent).max() == 0


# Each bad input's own reason, word for word (libsndfile 1.2's words for text and corrupt).
BAD_INPUT_REASONS = {
    "missing.wav": "no such file",
    "empty.wav": "empty file (0 bytes)",
    "text.wav": "not a readable audio file (Format not recognised)",
    "corrupt.wav": "not a readable audio file (Error in WAV/W64/RF64 file. Malformed 'fmt ' chunk)",
    "nan.wav": "NaN/Inf sample at 0.375 s (sample 3000 is nan)",
    "inf.wav": "NaN/Inf sample at 0.250 s (sample 2000 is -inf)",
    "no-audio": "folder contains no audio files",
}


def test_bad_inputs_one_line_each_others_still_processed(tmp_path, model_file):
    good = tmp_path / "good.wav"
    sf.write(good, noise(1, 4000).T, 8000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(40)))
    nan = noise(1, 4000)
    nan[0, 3000] = np.nan
    sf.write(tmp_path / "nan.wav", nan.T, 8000, subtype="FLOAT")
    inf = noise(2, 4000)
    inf[1, 2000] = -np.inf  # in the second channel
    sf.write(tmp_path / "inf.wav", inf.T, 8000, subtype="FLOAT")
    (tmp_path / "no-audio").mkdir()
    (tmp_path / "no-audio" / "notes.txt").write_text("x")
    bad = ["missing.wav", "empty.wav", "text.wav", "corrupt.wav", "nan.wav", "inf.wav", "no-audio"]
    out = predict(*(tmp_path / b for b in bad), good, "--model", model_file, "--out", tmp_path / "sep", "--quiet")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    assert len(lines) == len(bad), out.stderr
    for name in bad:
        assert sum(str(tmp_path / name) in line for line in lines) == 1, (name, lines)
    assert "no such file" in out.stderr and "empty" in out.stderr and "NaN" in out.stderr
    assert "no audio files" in out.stderr
    # each file's line gives its own reason, exactly (not words that its path happens to hold)
    assert sorted(lines) == sorted(f"chimera: error: {tmp_path / name}: {BAD_INPUT_REASONS[name]}" for name in bad)
    assert sorted(os.listdir(tmp_path / "sep")) == ["good"]   # nothing for the bad ones
    assert sorted(os.listdir(tmp_path / "sep" / "good")) == ["accompaniment.wav", "vocals.wav"]


def test_incompatible_model_file(tmp_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 4000).T, 8000)
    fake = tmp_path / "model.pt"
    torch.save({"hello": 1}, fake)
    out = run_cli(capsys, "predict", src, "--model", fake, "--out", tmp_path / "sep")
    assert out.returncode != 0 and str(fake) in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sep").exists()


def test_existing_outputs_need_force(tmp_path, model_file, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 4000).T, 8000)
    args = [src, "--model", model_file, "--out", tmp_path / "sep", "--quiet"]
    assert run_cli(capsys, "predict", *args).returncode == 0
    target = tmp_path / "sep" / "a" / "vocals.wav"
    target.write_bytes(b"keep me")
    out = run_cli(capsys, "predict", *args)
    assert out.returncode != 0 and "--force" in out.stderr
    assert target.read_bytes() == b"keep me"
    assert run_cli(capsys, "predict", *args, "--force").returncode == 0
    assert sf.info(target).frames == 4000


def test_output_files_in_source_order(tmp_path, model_file, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 4000).T, 8000)
    out = run_cli(capsys, "predict", src, "--model", model_file, "--output-files", tmp_path / "v.flac",
                  tmp_path / "acc.flac", "--quiet", "--format", "flac")
    assert out.returncode == 0, out.stderr
    assert sf.info(tmp_path / "v.flac").frames == 4000 and sf.info(tmp_path / "acc.flac").frames == 4000


def test_killed_run_leaves_no_partial_files(tmp_path, model_file):
    src = tmp_path / "long.wav"  # an hour: minutes of work even for the tiny model
    with sf.SoundFile(src, "w", 8000, 1, subtype="PCM_16") as f:
        for k in range(60):
            f.write(noise(1, 8000 * 60, seed=k)[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}
    proc = subprocess.Popen([sys.executable, "-m", "chimera", "predict", str(src), "--model", str(model_file),
                             "--out", str(tmp_path / "sep"), "--segment", "0.5", "--overlap", "0.1", "--batch-size", "1"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    # wait until it is writing (the progress bar has advanced), then kill it
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "sep" / "long").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    assert (tmp_path / "sep" / "long").is_dir() and proc.poll() is None, proc.stderr.read()  # mid-write
    proc.send_signal(os_signal.SIGKILL)
    assert proc.wait() == -os_signal.SIGKILL  # killed, not finished
    left = [p for p in (tmp_path / "sep").rglob("*") if p.is_file()] if (tmp_path / "sep").exists() else []
    assert left == []


def test_kmeans_sources_are_named_after_the_mask_head():
    # k-means numbers its clusters arbitrarily; the Separator orders them by the mask
    # head's masks, so source 0 is "vocals" by both methods
    model = tiny_model()
    x = torch.from_numpy(noise(8, 4000, seed=2))
    out = model(x)
    sep = Separator(model, device="cpu", method="kmeans", wiener_iters=0)
    masks = (sep.source_spectra(x).abs() > 0).to(torch.float32)
    reference = out.masks.abs()
    kept = (masks * reference).sum((-2, -1)).sum(-1)                  # overlap in the given order
    swapped = (masks.flip(1) * reference).sum((-2, -1)).sum(-1)
    assert (kept >= swapped).all(), (kept, swapped)


def check_streaming_istft_runs_where_the_spectra_are(device):
    # the inverse STFT runs on the separator's device in float32 (chimera/stream.py says why)
    model = tiny_model()
    x = noise(2, 8000 * 2 + 5)
    sep = Separator(model, segment=1.0, overlap=0.25, device=device, wiener_iters=0)
    stream = sep.stream(2, 8000, x.shape[1])
    got = np.concatenate(list(stream.push(x.T)) + list(stream.finish()))
    assert stream._istft.window.device.type == device and stream._istft.window.dtype == torch.float32
    want = separate_in_memory_reference(tiny_model(), x, 1.0, 0.25)  # float64, CPU
    np.testing.assert_allclose(got.transpose(1, 2, 0), want, atol=2e-5 if device == "cuda" else 2e-6, rtol=0)


def test_streaming_istft_runs_where_the_spectra_are():
    check_streaming_istft_runs_where_the_spectra_are("cpu")


@cuda
def test_streaming_istft_runs_on_the_gpu():
    check_streaming_istft_runs_where_the_spectra_are("cuda")


def test_separation_reports_through_logging(tmp_path, caplog):
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 4000).T, 8000)
    with caplog.at_level(logging.INFO, logger="chimera"):
        Separator(tiny_model(), device="cpu").separate_file(src, tmp_path / "sep")
    [record] = [r for r in caplog.records if r.name == "chimera.separate"]
    assert record.levelno == logging.INFO and str(src) in record.getMessage() and "real time" in record.getMessage()


def test_verbose_shows_the_library_messages(tmp_path, model_file, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, noise(1, 4000).T, 8000)
    args = [src, "--model", model_file, "--out", tmp_path / "sep", "--force"]
    plain, verbose = run_cli(capsys, "predict", *args), run_cli(capsys, "predict", *args, "-v")
    assert plain.returncode == verbose.returncode == 0
    assert "real time" not in plain.stderr and "real time" in verbose.stderr and str(src) in verbose.stderr


def test_predict_and_evaluate_share_the_separator_options():
    parser = build_parser()
    options = ["--model", "m.pt", "--segment", "3", "--overlap", "0.5", "--device", "cpu", "--batch-size", "2",
               "--method", "kmeans", "--misi", "2", "--wiener", "0"]
    names = ["model", "segment", "overlap", "device", "batch_size", "method", "misi", "wiener"]
    for given in ([], options):
        p = vars(parser.parse_args(["predict", "x.wav", *given]))
        e = vars(parser.parse_args(["evaluate", "data", *given]))
        assert {k: p[k] for k in names} == {k: e[k] for k in names}
    assert p["misi"] == 2 and p["method"] == "kmeans"


# ---------------------------------------------------------------------- the Python API

def test_separate_is_sources_first_on_the_callers_device_and_dtype():
    sep = Separator(tiny_model(), segment=0.5, overlap=0.1, device="cpu", wiener_iters=0)
    x = torch.from_numpy(noise(3, 8000 + 77, seed=5)).double().requires_grad_()  # 3 channels: not C = 2
    y = sep.separate(x, 8000)
    assert y.shape == (2, 3, x.shape[1]) and y.dtype == torch.float64 and not y.requires_grad
    for c in range(3):  # y[:, c] is channel c, separated on its own (no Wiener filter across channels)
        alone = sep.separate(x[c].detach().float().numpy(), 8000)   # (C, L)
        torch.testing.assert_close(y[:, c].float(), alone, atol=1e-6, rtol=0)
    assert list(dict(zip(sep.source_names, y))) == ["vocals", "accompaniment"]
    assert sep.separate(noise(2, 4000), 8000.0).dtype == torch.float32  # an array: float32 on the CPU


def test_separate_refuses_what_it_would_misread():
    sep = Separator(tiny_model(), device="cpu")
    x = noise(2, 4000)
    with pytest.raises(ValueError, match=r"\(4000, 2\) has more channels than samples.*transpose"):
        sep.separate(x.T, 8000)                                  # soundfile's (samples, channels)
    with pytest.raises(TypeError, match="int16"):
        sep.separate((x * 32767).astype(np.int16), 8000)
    for rate in (0, -8000, 44100.5, True):
        with pytest.raises(ValueError, match="sample_rate must be a"):
            sep.separate(x, rate)
    with pytest.raises(ValueError, match="arguments swapped"):
        sep.separate(8000, x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        sep.separate(np.full((1, 100), np.inf, np.float32), 8000)
    for empty in (np.zeros((2, 0), np.float32), np.zeros(0, np.float32)):
        with pytest.raises(ValueError, match="has no samples"):
            sep.separate(empty, 8000)



def test_a_rate_no_recording_has_is_one_value_error_before_any_work(tmp_path, model_file, capsys, one_thread):
    # 10**11 Hz grew the resampler's flush past several GB; MAX_RATE is the one bound, for
    # the Python API and for a file's header (checked before any output exists)
    from chimera.separate import MAX_RATE

    sep = Separator(tiny_model(), device="cpu")
    for rate in (MAX_RATE + 1, 10**11, float(10**11)):
        with pytest.raises(ValueError, match=f"^sample rate {int(rate)} Hz is above {MAX_RATE} Hz, the highest "):
            sep.separate(noise(1, 1000), rate)
    with pytest.raises(ValueError, match=f"above {MAX_RATE} Hz"):
        sep.stream(1, 8000, 1000, out_rate=10**11)
    assert sep.separate(noise(1, 1000), MAX_RATE).shape == (2, 1, 1000)
    src = tmp_path / "iq.wav"
    sf.write(src, noise(1, 1000).T, 2 * MAX_RATE)  # what a WAV header holds (and libsndfile reads) goes far higher
    out = run_cli(capsys, "predict", src, "-n", model_file, "-o", tmp_path / "sep")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [f"chimera: error: {src}: sample rate {2 * MAX_RATE} Hz is above {MAX_RATE} Hz, "
                                       "the highest chimera separates (a damaged header?)"]
    assert not (tmp_path / "sep").exists()

def test_separate_takes_any_numpy_layout_and_very_short_multichannel_input():
    # reversed views and big-endian arrays (as read from some files) are samples like any
    # other; a stereo signal of one sample is (2, 1), not a transposed mono one
    sep = Separator(tiny_model(), device="cpu", wiener_iters=0)
    x = noise(2, 4000, seed=8)
    want = sep.separate(x, 8000)
    torch.testing.assert_close(sep.separate(x.astype(">f4"), 8000), want, rtol=0, atol=0)
    flipped = np.ascontiguousarray(x[:, ::-1])
    torch.testing.assert_close(sep.separate(x[:, ::-1], 8000), sep.separate(flipped, 8000), rtol=0, atol=0)
    for shape in ((2, 1), (3, 2), (8, 5)):
        assert sep.separate(noise(*shape), 8000).shape == (2, *shape)


@cuda
def test_separate_returns_to_the_callers_gpu():
    sep = Separator(tiny_model(), device="cuda", wiener_iters=0)
    x = torch.from_numpy(noise(2, 4000)).cuda().requires_grad_()
    y = sep.separate(x, 8000)
    assert y.device == x.device and y.shape == (2, 2, 4000) and not y.requires_grad
    torch.testing.assert_close(y.cpu(), sep.separate(x.detach().cpu(), 8000), atol=1e-5, rtol=0)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrained_load_from_pretrained_and_torch_hub():
    from chimera import pretrained

    model = pretrained.load()
    assert isinstance(model, SeparationModel) and not model.training
    assert tuple(model.source_names) == ("vocals", "accompaniment")
    sep = Separator.from_pretrained(device="cpu", wiener_iters=0)
    assert sep.wiener_iters == 0 and _same_weights(sep.model, model)
    assert _same_weights(pretrained.load(pretrained.default_model_path()), model)   # a file by path
    hub = torch.hub.load(str(ROOT), "vocals_accompaniment", source="local")          # from this clone
    assert _same_weights(hub, model) and not hub.training
    untrained = torch.hub.load(str(ROOT), "vocals_accompaniment", source="local", pretrained=False)
    assert untrained.config == model.config and not _same_weights(untrained, model)
    with pytest.raises(ValueError, match="bundled: vocals_accompaniment"):
        pretrained.load("drums")



HUB_SCRIPT = """
import sys, torch
from chimera import pretrained
repo = sys.argv[1]
model = torch.hub.load(repo, "vocals_accompaniment", source="local")
want = pretrained.load().state_dict()
assert not model.training and all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
auto = torch.hub.load(repo, "vocals_accompaniment", source="local", device="auto", pretrained=False)
assert next(auto.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
assert auto.config == model.config and not any(torch.equal(v.cpu(), want[k]) for k, v in auto.named_parameters())
for name, kwargs in (("vocals_accompaniment", dict(pretrained="no")), ("vocals_accompaniment", dict(device="gpu")),
                     ("vocals_accompaniment", dict(device="cuda:99")), ("SeparationModel", dict(config=model.config))):
    try:
        torch.hub.load(repo, name, source="local", **kwargs)
        print(name, kwargs, "loaded")
    except (ValueError, RuntimeError) as exc:
        print(f"{name}: {type(exc).__name__}: {exc}")
"""


def test_torch_hub_serves_the_bundled_model_offline_in_a_fresh_process(tmp_path):
    # a fresh interpreter away from the clone, with an empty torch home: nothing is fetched or
    # cached; only the model is an entry point (the SeparationModel class that hubconf imported
    # was one), and a bad argument is one ValueError ("auto" failed in torch.device)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(ROOT)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:2] == ["vocals_accompaniment: ValueError: pretrained must be True or False, got 'no'",
                         "vocals_accompaniment: ValueError: 'gpu' is not a device; use auto, cpu, cuda or cuda:N"]
    assert lines[2].startswith("vocals_accompaniment: ValueError: device cuda:99: ") and len(lines) == 4, lines
    assert lines[3] == "SeparationModel: RuntimeError: Cannot find callable SeparationModel in hubconf"
    assert not (tmp_path / "torch-home").exists()


def test_readme_python_examples_run_as_written(tmp_path, monkeypatch, one_thread):
    # a clone's files without its outputs, as the working folder: what a user in a clone has
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".venv", "separated", "build"):
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {k}", "exec"), {"__name__": f"readme_{k}"})
    frames = sf.info(ROOT / "examples" / "demo-mixture.ogg").frames
    for s in ("vocals", "accompaniment"):
        assert sf.info(tmp_path / "separated" / "demo-mixture" / f"{s}.wav").frames == frames


def test_python_and_command_line_defaults_are_the_same():
    from chimera.cli import separator_options

    params = inspect.signature(Separator).parameters
    for command in (["predict", "x.wav"], ["evaluate", "data"]):
        args = build_parser().parse_args(command)
        cli = {**separator_options(args), "device": args.device}
        assert cli == {k: params[k].default for k in cli}
    assert params["wiener_iters"].default == 1 and params["wiener_exponent"].default == 1.0  # the model card's
    args = build_parser().parse_args(["predict", "x.wav", "--wiener-exponent", "0.75"])
    assert separator_options(args)["wiener_exponent"] == 0.75


def test_the_wiener_filter_works_across_channels_and_shares_mono_bins_by_magnitude():
    model = tiny_model()
    x = noise(1, 6000, seed=4)
    xt = torch.as_tensor(x)
    plain = Separator(model, device="cpu", wiener_iters=0).separate(x, 8000)
    assert float(((plain.sum(0) - xt) ** 2).sum() / (xt ** 2).sum()) > 1e-3  # the masks alone do not add up
    # one channel: each bin of the mixture shared among the sources by their magnitudes, so
    # that they add up to the input, whatever the iterations (the shares do not move)
    raw = Separator(model, device="cpu", wiener_iters=0).source_spectra(xt, 1)        # (1, C, F, T)
    with torch.no_grad():
        mix = model(xt, need_embedding=False).mixture_spec                             # (1, F, T)
    want = raw.abs() / raw.abs().sum(1, keepdim=True).clamp_min(1e-30) * mix.unsqueeze(1)
    for iters in (1, 2):
        got = Separator(model, device="cpu", wiener_iters=iters).source_spectra(xt, 1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(mix.abs().max()))
        shared = Separator(model, device="cpu", wiener_iters=iters).separate(x, 8000)
        torch.testing.assert_close(shared.sum(0), xt, rtol=0, atol=1e-5)
    stereo = np.concatenate([x, 0.5 * x + noise(1, 6000, seed=5)])
    filtered = Separator(model, device="cpu", wiener_iters=1).separate(stereo, 8000)
    assert (filtered - Separator(model, device="cpu", wiener_iters=0).separate(stereo, 8000)).abs().max() > 1e-3
    softer = Separator(model, device="cpu", wiener_iters=1, wiener_exponent=0.5).separate(stereo, 8000)
    assert (softer - filtered).abs().max() > 1e-4  # the exponent reaches the filter
    torch.testing.assert_close(softer.sum(0), filtered.sum(0), rtol=0, atol=1e-4)  # both add up to the input
    for bad in (0, -0.5, float("nan"), "1"):
        with pytest.raises(ValueError, match="wiener_exponent"):
            Separator(model, device="cpu", wiener_exponent=bad)


def test_kmeans_sources_do_not_depend_on_batch_size_or_blocks(tmp_path):
    # k-means clustered each segment differently depending on the other segments of its
    # forward pass: the sources changed with batch_size (0.16 at a peak of 0.23 here), and a
    # file's with the block size it was read in (how many segments were ready at once)
    model = tiny_model()
    x = noise(1, 8000, seed=3)
    sep = Separator(model, segment=0.1, overlap=0.032, device="cpu", method="kmeans", batch_size=4)
    want = sep.separate(x, 8000).numpy()
    one = Separator(model, segment=0.1, overlap=0.032, device="cpu", method="kmeans", batch_size=1)
    np.testing.assert_allclose(one.separate(x, 8000).numpy(), want, atol=1e-6)
    src = tmp_path / "in.wav"
    sf.write(src, x.T, 8000, subtype="FLOAT")
    out = sep.separate_file(src, tmp_path / "out", subtype="FLOAT", clip="none", block_seconds=0.01)
    got = np.stack([sf.read(p, always_2d=True)[0].T for p in out])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_short_many_channel_input_adds_up_to_the_input():
    # 16 channels and 30 ms: fewer frames of signal than channels, so the Wiener filter's
    # ridge took part of the input out of every source (-32 dB of error, not -140)
    model = tiny_model()
    x = noise(16, 240, seed=1)
    y = Separator(model, segment=1.0, overlap=0.25, device="cpu").separate(x, 8000).numpy()
    err = ((y.sum(0) - x).astype(np.float64) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
    assert 10 * np.log10(err) < -100


def test_options_that_cannot_work_raise_one_clear_value_error(tmp_path):
    # each failed otherwise with an OverflowError, torch's RuntimeError at the first k-means
    # segment, a TypeError deep inside, or ran as something else (1.5 iterations as 1,
    # 8000.5 Hz as 8000, block_seconds <= 0 as one-sample blocks)
    model = tiny_model()
    for options in (dict(wiener_iters=1.5), dict(wiener_iters=float("nan")), dict(misi_iters=None),
                    dict(seed=None, method="kmeans"), dict(seed=1.5, method="kmeans")):
        with pytest.raises(ValueError, match=next(iter(options))):
            Separator(model, device="cpu", **options).separate(noise(1, 500)[0], 8000)
    sep = Separator(model, segment=0.1, overlap=0.032, device="cpu")
    for rate in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="sample_rate"):
            sep.separate(noise(1, 500)[0], rate)
    with pytest.raises(ValueError, match="sample_rate"):
        sep.stream(1, 8000.5, 500)
    with pytest.raises(ValueError, match="channels"):
        sep.stream(0, 8000, 500)
    src = tmp_path / "in.wav"
    sf.write(src, noise(2, 500).T, 8000)
    for block in (float("inf"), float("nan"), 0, -1.0, None, "0.1"):
        with pytest.raises(ValueError, match="block_seconds"):
            sep.separate_file(src, tmp_path / "out", block_seconds=block)
    assert not (tmp_path / "out").exists()
