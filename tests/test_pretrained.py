"""The bundled model: it loads, `predict` and `evaluate` use it when --model is omitted, and it
separates held-out material (examples/demo-stems: a real recorded voice over game music, never
heard in training) as well as its model card says, within a margin, through the command line
as a user runs it: 44.1 kHz stereo, longer than one segment (resampling to the model's rate,
segment joins, the Wiener filter and the band above the model's all exercised)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from chimera.models import load_checkpoint
from chimera.pretrained import default_model_path
from chimera.separate import DEFAULT_SEGMENT
from tools.choose_checkpoint import scores as validation_scores
from tools.choose_segment import improvement as gain_db  # over both channels as one signal

ROOT = Path(__file__).resolve().parents[1]
STEMS = ROOT / "examples" / "demo-stems"
SOLOS = ROOT / "tests" / "data" / "solos"
SOURCES = ("vocals", "accompaniment")
# The model card's figures (chimera/pretrained/README.md) for the shipped weights on the demo
# stems through `chimera predict` with its defaults, in dB: SI-SDR improvement over the
# mixture on the whole band, and on the band above HIGH_HZ alone. A result more than
# TOLERANCE_DB away, either way, means the weights, the pipeline or the card changed.
SI_SDRI = {"vocals": 9.24, "accompaniment": 12.60}
HIGH_SI_SDRI = {"vocals": 9.54, "accompaniment": 10.29}
# Leak on the held-out solos (tests/data/solos): the energy of the output that should be
# silent over the input's, in dB; issue 20's goal is -20 dB or less for instrumentals,
# synthetic and real voices. These excerpts all meet it, and so does the median of the
# held-out split of 8 instrumentals of 45 s (-26.85 dB, model card).
SOLO_SILENT = {"solo-instrumental": "vocals", "solo-synthetic": "accompaniment", "solo-real": "accompaniment",
               "solo-sung": "accompaniment"}
LEAK_DB = {"solo-instrumental": -65.57, "solo-synthetic": -34.02, "solo-real": -35.92, "solo-sung": -59.82}
LEAK_GOAL_MET = ("solo-instrumental", "solo-synthetic", "solo-real")
LEAK_GOAL_DB = -20.0
# The example's accompaniment stem played alone (game music with a melodic lead): the vocals
# output's energy over the input's, model card. Step 7 meets the goal on it (step 6 leaked
# -18.71 dB: a melodic lead heard as a voice in some frames; 3 of the 8 held-out
# instrumentals still leak more than -20 dB).
EXAMPLE_ACCOMPANIMENT_LEAK_DB = -33.32
TOLERANCE_DB = 0.3
HIGH_HZ = 8500.0  # above the 16 kHz model's band and its resampler's transition


def _chimera(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "chimera", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def highpass(x, rate, cutoff=HIGH_HZ):
    """(..., L) → the part of x above `cutoff` (an ideal filter on the whole signal)."""
    spec = np.fft.rfft(np.asarray(x, np.float64), axis=-1)
    spec[..., np.fft.rfftfreq(np.shape(x)[-1], 1 / rate) <= cutoff] = 0
    return np.fft.irfft(spec, np.shape(x)[-1], axis=-1)


@pytest.fixture(scope="module")
def bundled():
    model, state = load_checkpoint(default_model_path())
    return model


@pytest.fixture(scope="module")
def stems():
    refs = {}
    for s in SOURCES:
        x, rate = sf.read(STEMS / f"{s}.ogg", dtype="float32", always_2d=True)
        refs[s] = x.T  # (channels, L)
    return refs, rate


@pytest.fixture(scope="module")
def predicted(stems, tmp_path_factory):
    """One `chimera predict` with its defaults, on one thread as the model card measured, on
    the sum of the stems (a 44.1 kHz stereo WAV, "mix") and the solos: {name: (input,
    {source: output})}, each (channels, L)."""
    refs, rate = stems
    tmp = tmp_path_factory.mktemp("pretrained")
    inputs = {"mix": refs["vocals"] + refs["accompaniment"]}
    for f in sorted(SOLOS.glob("*.ogg")):
        inputs[f.stem] = sf.read(f, dtype="float32", always_2d=True)[0].T
    for name, x in inputs.items():
        sf.write(tmp / f"{name}.wav", x.T, rate, subtype="FLOAT")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_REQUIRE")}, "OMP_NUM_THREADS": "1"}
    r = _chimera("predict", *(tmp / f"{n}.wav" for n in inputs), "--out", tmp / "sep", "--float32", cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr
    result = {}
    for name, x in inputs.items():
        out = {}
        for s in SOURCES:
            y, out_rate = sf.read(tmp / "sep" / name / f"{s}.wav", dtype="float32", always_2d=True)
            assert out_rate == rate and y.shape == x.T.shape
            out[s] = y.T
        result[name] = (x, out)
    return result


@pytest.fixture(scope="module")
def separated(predicted):
    return predicted["mix"]


def test_bundled_model_is_small_and_describes_itself(bundled):
    size = os.path.getsize(default_model_path())
    assert size < 16 * 2**20, f"bundled model is {size / 2**20:.1f} MiB"
    assert tuple(bundled.source_names) == SOURCES
    assert bundled.stft.sample_rate == 16000
    assert bundled.mask_head is not None and bundled.embedding_head is not None


def test_the_example_exercises_the_whole_pipeline(stems):
    refs, rate = stems
    assert rate == 44100 and refs["vocals"].shape[0] == 2
    assert refs["vocals"].shape[1] > DEFAULT_SEGMENT * rate  # at least one segment join
    for s in SOURCES:  # both stems reach above the model's band
        assert (highpass(refs[s], rate) ** 2).sum() > 1e-4 * (refs[s].astype(np.float64) ** 2).sum()


@pytest.mark.parametrize("source", SOURCES)
def test_bundled_model_separates_held_out_stems_as_its_card_says(stems, separated, source):
    refs, rate = stems
    mixture, out = separated
    gain = gain_db(out[source], refs[source], mixture)
    assert abs(gain - SI_SDRI[source]) <= TOLERANCE_DB, \
        f"{source}: SI-SDR improvement {gain:.2f} dB, model card {SI_SDRI[source]}"


@pytest.mark.parametrize("source", SOURCES)
def test_the_high_band_comes_back_in_the_right_source(stems, separated, source):
    # the band above the model's is in the outputs, and split better than the mixture is
    refs, rate = stems
    mixture, out = separated
    hp = highpass(out[source], rate)
    assert (hp ** 2).sum() > 0.01 * (highpass(mixture, rate) ** 2).sum()
    gain = gain_db(hp, highpass(refs[source], rate), highpass(mixture, rate))
    assert abs(gain - HIGH_SI_SDRI[source]) <= TOLERANCE_DB, \
        f"{source} above {HIGH_HZ:g} Hz: SI-SDR improvement {gain:.2f} dB, model card {HIGH_SI_SDRI[source]}"


def test_the_sources_add_up_to_the_input(separated):
    mixture, out = separated
    total = sum(out[s].astype(np.float64) for s in SOURCES)
    err = ((total - mixture) ** 2).sum() / (mixture.astype(np.float64) ** 2).sum()
    assert 10 * np.log10(err) < -20
    high = (highpass(total, 44100) ** 2).sum() / (highpass(mixture, 44100) ** 2).sum()
    assert high == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("solo", sorted(SOLO_SILENT))
def test_a_source_alone_stays_alone(predicted, solo):
    x, out = predicted[solo]
    silent = out[SOLO_SILENT[solo]].astype(np.float64)
    leak = 10 * np.log10((silent ** 2).sum() / (x.astype(np.float64) ** 2).sum())
    assert abs(leak - LEAK_DB[solo]) <= TOLERANCE_DB, f"{solo}: leak {leak:.2f} dB, model card {LEAK_DB[solo]}"
    if solo in LEAK_GOAL_MET:
        assert leak <= LEAK_GOAL_DB


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
        sf.write(track / f"{s}.wav", refs[s].T, rate, subtype="FLOAT")
    sf.write(track / "mixture.wav", (refs["vocals"] + refs["accompaniment"]).T, rate, subtype="FLOAT")
    model_run = _chimera("evaluate", tmp_path / "data", "--out", tmp_path / "model.json", cwd=tmp_path)
    mix_run = _chimera("evaluate", tmp_path / "data", "--oracle", "mixture", "--out", tmp_path / "mix.json",
                       cwd=tmp_path)
    assert model_run.returncode == 0, model_run.stderr
    assert mix_run.returncode == 0, mix_run.stderr
    model = json.loads((tmp_path / "model.json").read_text())["summary"]
    mix = json.loads((tmp_path / "mix.json").read_text())["summary"]
    for s in SOURCES:
        assert model[s]["SDR"] > mix[s]["SDR"] + 3.0, (s, model[s], mix[s])


def test_choosing_a_checkpoint_measures_what_predict_gives(stems, tmp_path):
    """tools/choose_checkpoint.py (the shipped checkpoint was chosen with it) on a one-track
    folder of the example: its SI-SDR improvements are the command line's, and each stem
    played alone leaks what the model card says."""
    refs, rate = stems
    track = tmp_path / "valid" / "example"
    track.mkdir(parents=True)
    for name, x in {**refs, "mixture": refs["vocals"] + refs["accompaniment"]}.items():
        sf.write(track / f"{name}.wav", x.T, rate, subtype="FLOAT")
    row = validation_scores(str(default_model_path()), str(tmp_path / "valid"))
    for s in SOURCES:
        assert abs(row[f"{s} SI-SDRi"] - SI_SDRI[s]) <= TOLERANCE_DB, (s, row)
    assert row["vocals alone: leak"] <= LEAK_GOAL_DB  # a real recorded voice alone
    assert abs(row["accompaniment alone: leak"] - EXAMPLE_ACCOMPANIMENT_LEAK_DB) <= TOLERANCE_DB, row
    assert row["accompaniment alone: leak"] <= LEAK_GOAL_DB


def test_the_model_card_describes_the_shipped_file(bundled):
    """The card's size, parameter count and architecture are the file's."""
    card = " ".join((ROOT / "chimera" / "pretrained" / "README.md").read_text().split())
    cfg, st = bundled.config, bundled.stft
    assert f"Size: {os.path.getsize(default_model_path()) / 1e6:.1f} MB" in card
    assert f"{sum(p.numel() for p in bundled.parameters()) / 1e6:.2f} M parameters" in card
    assert f"hidden = {cfg.hidden}" in card and f"{cfg.layers}-layer bidirectional LSTM with {cfg.hidden} units" in card
    assert f"D = {cfg.embedding_dim}, {cfg.embedding_activation}" in card
    assert f"mono at {st.sample_rate // 1000} kHz, STFT with n_fft {st.n_fft}, hop {st.hop_length}" in card
