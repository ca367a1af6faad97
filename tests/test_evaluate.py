"""`chimera evaluate`: museval BSS Eval v4 + SI-SDR, oracles, outputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from chimera.models import SeparationModel, preset, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
museval = pytest.importorskip("museval")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two short stereo tracks: a tone 'vocals' and noise 'accompaniment'."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    for k in range(2):
        vocals = np.stack([0.3 * np.sin(2 * np.pi * (300 + 50 * k) * t)] * 2).astype(np.float32)
        acc = (0.1 * rng.standard_normal((2, t.size))).astype(np.float32)
        folder = root / f"track{k}"
        folder.mkdir()
        for name, x in (("vocals", vocals), ("accompaniment", acc), ("mixture", vocals + acc)):
            sf.write(folder / f"{name}.wav", x.T, RATE, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    save_checkpoint(path, SeparationModel(preset("chimerapp", "small", hidden=16, layers=1, embedding_dim=4,
                                                 stft=dict(sample_rate=RATE, n_fft=256, hop_length=64),
                                                 source_names=["vocals", "accompaniment"])))
    return path


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}
    return subprocess.run([sys.executable, "-m", "chimera", "evaluate", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def test_oracle_scores_equal_an_independent_computation(dataset, model_file, tmp_path):
    out = run_cli(dataset, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json", "--quiet")
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    # the model's STFT (8 kHz, n_fft 256, hop 64, Hann) at the data's own rate: no resampling
    per_track = []
    for k in range(2):
        refs = np.stack([sf.read(dataset / f"track{k}" / f"{s}.wav", dtype="float32")[0] for s in ("vocals", "accompaniment")])
        # independent IRM: |S_c| / Σ|S_j| on torch.stft, inverted with torch.istft
        w = torch.hann_window(256, dtype=torch.float64)
        S = torch.stft(torch.from_numpy(refs).double().permute(0, 2, 1).reshape(-1, refs.shape[1]), 256, 64,
                       window=w, return_complex=True).reshape(2, 2, 129, -1)
        X = S.sum(0)
        masks = S.abs() / S.abs().sum(0).clamp_min(1e-12)
        est = torch.istft((masks * X).reshape(4, 129, -1), 256, 64, window=w, length=refs.shape[1])
        est = est.reshape(2, 2, -1).permute(0, 2, 1).numpy()
        sdr, isr, sir, sar = museval.evaluate(refs, est, win=RATE, hop=RATE)
        per_track.append(np.nanmedian(sdr, axis=1))
    want = np.median(np.stack(per_track), 0)
    got = [results["summary"][s]["SDR"] for s in ("vocals", "accompaniment")]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert got[0] > 10  # an oracle on a tone over noise is far above the mixture
    assert (tmp_path / "r.csv").exists()


def test_model_mixture_and_plot(dataset, model_file, tmp_path):
    out = run_cli(dataset, "--model", model_file, "--out", tmp_path / "m.json", "--plot", tmp_path / "h.png", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "vocals" in out.stdout and "SDR" in out.stdout        # the summary table
    model = json.loads((tmp_path / "m.json").read_text())
    assert [t["track"] for t in model["tracks"]] == ["track0", "track1"]
    assert (tmp_path / "h.png").stat().st_size > 1000
    mix = run_cli(dataset, "--model", model_file, "--oracle", "mixture", "--out", tmp_path / "x.json", "--quiet")
    assert mix.returncode == 0, mix.stderr
    mixture = json.loads((tmp_path / "x.json").read_text())
    # the unprocessed mixture as the estimate: SI-SDR equals the input SNR of each source
    refs = sf.read(dataset / "track0" / "vocals.wav")[0].T
    accs = sf.read(dataset / "track0" / "accompaniment.wav")[0].T
    snr = 10 * np.log10((refs ** 2).sum(-1) / (accs ** 2).sum(-1)).mean()
    assert mixture["tracks"][0]["scores"]["vocals"]["SI-SDR"] == pytest.approx(snr, abs=0.1)


def test_bad_data_dir_is_one_line(tmp_path, model_file):
    out = run_cli(tmp_path / "nothing", "--model", model_file)
    assert out.returncode != 0 and "no such folder" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "t").mkdir()
    sf.write(tmp_path / "t" / "mixture.wav", np.zeros(800), RATE)
    out = run_cli(tmp_path, "--model", model_file)
    assert out.returncode != 0 and "vocals.wav" in out.stderr and "Traceback" not in out.stderr
