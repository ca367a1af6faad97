"""The bundled model: it loads, `predict` and `evaluate` use it when --model is omitted, and it
separates held-out material (examples/demo-stems, never heard in training) as well as its model
card says, within a margin."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from chimera.models import load_checkpoint
from chimera.objectives import si_sdr
from chimera.pretrained import default_model_path
from chimera.separate import Separator

ROOT = Path(__file__).resolve().parents[1]
STEMS = ROOT / "examples" / "demo-stems"
SOURCES = ("vocals", "accompaniment")
# The model card's figures (chimera/pretrained/README.md) for the shipped weights on the demo
# stems (mono, Separator defaults, one thread): SI-SDR improvement in dB. A result more than
# TOLERANCE_DB away, either way, means the weights, the pipeline or the card changed.
SI_SDRI = {"vocals": 10.72, "accompaniment": 7.27}
TOLERANCE_DB = 0.3


@pytest.fixture(scope="module")
def bundled():
    model, state = load_checkpoint(default_model_path())
    return model


@pytest.fixture(scope="module")
def stems():
    out = {}
    for s in SOURCES:
        x, rate = sf.read(STEMS / f"{s}.flac", dtype="float32")
        out[s] = x
    return out, rate


def test_bundled_model_is_small_and_describes_itself(bundled):
    size = os.path.getsize(default_model_path())
    assert size < 16 * 2**20, f"bundled model is {size / 2**20:.1f} MiB"
    assert tuple(bundled.source_names) == SOURCES
    assert bundled.stft.sample_rate == 16000
    assert bundled.mask_head is not None and bundled.embedding_head is not None


def test_bundled_model_separates_held_out_stems(bundled, stems, one_thread):
    (refs, rate) = stems
    mixture = refs["vocals"] + refs["accompaniment"]
    est = Separator(bundled, device="cpu").separate(mixture, rate)  # (C, L)
    assert est.shape == (2, mixture.shape[0])
    mix = torch.from_numpy(mixture).double()
    for k, s in enumerate(SOURCES):
        ref = torch.from_numpy(refs[s]).double()
        gain = float(si_sdr(est[k].double(), ref) - si_sdr(mix, ref))
        assert abs(gain - SI_SDRI[s]) <= TOLERANCE_DB, f"{s}: SI-SDR improvement {gain:.2f} dB, model card {SI_SDRI[s]}"


def _chimera(*args, cwd):
    return subprocess.run([sys.executable, "-m", "chimera", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_predict_without_model_uses_the_bundled_one(tmp_path):
    src = ROOT / "examples" / "demo-mixture.ogg"
    r = _chimera("predict", src, "--out", tmp_path / "sep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = sf.info(src)
    for s in SOURCES:
        out = sf.info(tmp_path / "sep" / "demo-mixture" / f"{s}.wav")
        assert (out.frames, out.channels, out.samplerate) == (info.frames, info.channels, info.samplerate)


def test_evaluate_without_model_uses_the_bundled_one(tmp_path, stems):
    pytest.importorskip("museval")
    refs, rate = stems
    track = tmp_path / "data" / "demo"
    track.mkdir(parents=True)
    for s in SOURCES:
        sf.write(track / f"{s}.wav", refs[s], rate, subtype="FLOAT")
    sf.write(track / "mixture.wav", refs["vocals"] + refs["accompaniment"], rate, subtype="FLOAT")
    model_run = _chimera("evaluate", tmp_path / "data", "--out", tmp_path / "model.json", cwd=tmp_path)
    mix_run = _chimera("evaluate", tmp_path / "data", "--oracle", "mixture", "--out", tmp_path / "mix.json",
                       cwd=tmp_path)
    assert model_run.returncode == 0, model_run.stderr
    assert mix_run.returncode == 0, mix_run.stderr
    model = json.loads((tmp_path / "model.json").read_text())["summary"]
    mix = json.loads((tmp_path / "mix.json").read_text())["summary"]
    for s in SOURCES:
        assert model[s]["SDR"] > mix[s]["SDR"] + 3.0, (s, model[s], mix[s])
