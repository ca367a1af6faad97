"""tools/eval_goals.py: the arithmetic of its figures, and one run through `chimera predict`."""
import argparse
import contextlib
import json

import numpy as np
import pytest
import soundfile as sf

from chimera.evaluate import Track
from tools import eval_goals


def _tone_track(rate=44100, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    low = 0.3 * np.sin(2 * np.pi * 440 * t)
    high = 0.1 * np.sin(2 * np.pi * 12000 * t)
    refs = np.stack([np.stack([low, low]), np.stack([high, high])]).astype(np.float32)  # (C, ch, L)
    return Track("t", refs.sum(0), refs, rate)


def test_band_figures():
    track = _tone_track()
    exact = eval_goals.band_figures(track, track.references, 8000.0)
    assert exact["reconstruction_db"] < -100
    assert exact["high_band_share"]["vocals"] < 1e-6
    assert abs(exact["high_band_share"]["accompaniment"] - 1) < 1e-6
    # outputs that drop the high band: 1/10 of the amplitude (1/10 of the tone's) missing
    low_only = track.references.copy()
    low_only[1] = 0
    fig = eval_goals.band_figures(track, low_only, 8000.0)
    expected = 10 * np.log10(0.1 ** 2 / (0.3 ** 2 + 0.1 ** 2))
    assert abs(fig["reconstruction_db"] - expected) < 0.05
    assert sum(fig["high_band_share"].values()) < 1e-6


def test_summary_medians_and_gap():
    tracks = {f"t{i}": {"reconstruction_db": -30.0 - i ** 2, "high_band_share": {"vocals": 0.1, "accompaniment": 0.9},
                        "scores": {s: {"SDR": 5.0 + i ** 2, "SIR": 1.0, "SAR": 1.0, "SI-SDR": 1.0}
                                   for s in eval_goals.SOURCES},
                        "oracle_irm": {s: {"SDR": 10.0 + 2 * i ** 2} for s in eval_goals.SOURCES}}
              for i in range(3)}
    s = eval_goals.summarise("test-real", {"tracks": tracks})
    assert s["vocals_SDR"] == 6.0 and s["vocals_SDR_oracle"] == 12.0 and s["vocals_gap"] == 6.0
    assert s["reconstruction_db"] == -31.0 and s["reconstruction_db_worst"] == -30.0
    assert abs(s["high_band_sum_pct"] - 100.0) < 1e-9


@pytest.mark.slow
def test_one_solo_split_through_predict(tmp_path):
    """An instrumental solo through the bundled model: the leak is the vocals output's energy
    over the input's, read back from the files predict wrote."""
    rng = np.random.default_rng(0)
    rate = 44100
    acc = (0.1 * rng.standard_normal((3 * rate, 2))).astype(np.float32)
    d = tmp_path / "musdb" / "solo-instrumental" / "solo-instrumental-000"
    d.mkdir(parents=True)
    for name, x in (("mixture", acc), ("accompaniment", acc), ("vocals", np.zeros_like(acc))):
        sf.write(str(d / f"{name}.wav"), x, rate, subtype="FLOAT")
    out = tmp_path / "r.json"
    assert eval_goals.main(["--data", str(tmp_path / "musdb"), "--out", str(out),
                            "--splits", "solo-instrumental", "--predict-args", "--wiener 0"]) == 0
    doc = json.loads(out.read_text())
    fig = doc["results"]["solo-instrumental"]["tracks"]["solo-instrumental-000"]
    assert abs(fig["input_energy"] - float((acc.astype(np.float64) ** 2).sum())) < 1e-3 * fig["input_energy"]
    assert fig["leak_db"] == pytest.approx(10 * np.log10(fig["output_energy"]["vocals"] / fig["input_energy"]))
    assert doc["summary"]["solo-instrumental"]["leak_db"] == fig["leak_db"]


def test_a_silent_output_counts_as_the_lowest_score_not_as_unscored():
    # SI-SDR is -inf for a silent estimate (nothing recovered): left out, the median over
    # tracks rose as if that track had not been scored; NaN (undefined) is left out
    tracks = {f"t{i}": {"reconstruction_db": -30.0, "high_band_share": {"vocals": 0.1, "accompaniment": 0.9},
                        "scores": {s: {"SDR": 1.0, "SIR": 1.0, "SAR": 1.0, "SI-SDR": si}
                                   for s in eval_goals.SOURCES},
                        "oracle_irm": {s: {"SDR": 10.0} for s in eval_goals.SOURCES}}
              for i, si in enumerate([-np.inf, 1.0, 2.0, np.nan])}
    s = eval_goals.summarise("test-real", {"tracks": tracks})
    assert s["vocals_SI-SDR"] == 1.0


def _write(folder, track):
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(str(folder / "mixture.wav"), track.mixture.T, track.rate, subtype="FLOAT")
    for s, x in zip(eval_goals.SOURCES, track.references):
        sf.write(str(folder / f"{s}.wav"), x.T, track.rate, subtype="FLOAT")


def test_the_oracle_cache_does_not_outlive_a_rebuilt_split(tmp_path, monkeypatch):
    def predict(split_dir, names, work, model, extra):  # the references as the outputs, no model
        for n in names:
            (work / "out" / n).mkdir(parents=True)
            for s in eval_goals.SOURCES:
                (work / "out" / n / f"{s}.wav").write_bytes((split_dir / n / f"{s}.wav").read_bytes())
        return work / "out", 0.0
    monkeypatch.setattr(eval_goals, "predict", predict)
    args = argparse.Namespace(model=None, predict_args="", high_hz=8000.0, oracle_stft=json.dumps(
        {"sample_rate": 44100, "n_fft": 2048, "hop_length": 512, "window": "sqrt_hann"}))
    data, cache = tmp_path / "musdb", {}
    _write(data / "test-real" / "t", _tone_track())
    first = eval_goals.evaluate_split(data, "test-real", args, cache)["tracks"]["t"]["oracle_irm"]
    refs = (0.1 * np.random.default_rng(0).standard_normal((2, 2, 44100))).astype(np.float32)
    _write(data / "test-real" / "t", Track("t", refs.sum(0), refs, 44100))  # the split rebuilt, same names
    again = eval_goals.evaluate_split(data, "test-real", args, cache)["tracks"]["t"]["oracle_irm"]
    fresh = eval_goals.evaluate_split(data, "test-real", args, {})["tracks"]["t"]["oracle_irm"]
    assert again == fresh and fresh != first


def test_an_interrupted_cache_write_leaves_the_old_cache_readable(tmp_path, monkeypatch):
    def evaluate_split(data, split, args, cache):
        cache[f"{split}/t"] = {"new": True}
        return {"tracks": {"t": {"reconstruction_db": -30.0, "high_band_share": {s: 0.5 for s in eval_goals.SOURCES},
                                 "leak_db": -20.0}}, "predict_seconds": 0.0, "audio_seconds": 1.0}
    monkeypatch.setattr(eval_goals, "evaluate_split", evaluate_split)
    _write(tmp_path / "musdb" / "solo-real" / "t", _tone_track(seconds=0.1))  # a track: its list is checked first
    cache = tmp_path / "oracle-cache.json"
    cache.write_text(json.dumps({"old": 1}))
    real_atomic_write = eval_goals.atomic_write

    @contextlib.contextmanager
    def killed_midway(path, force=False):  # half the text on disk, then the run is stopped
        with real_atomic_write(path, force=force) as f:
            class Half:
                def write(self, data):
                    f.write(data[: len(data) // 2])
                    raise KeyboardInterrupt
            yield Half()
    monkeypatch.setattr(eval_goals, "atomic_write", killed_midway)
    argv = ["--data", str(tmp_path / "musdb"), "--out", str(tmp_path / "r.json"), "--splits", "solo-real"]
    with pytest.raises(KeyboardInterrupt):
        eval_goals.main(argv)
    monkeypatch.setattr(eval_goals, "atomic_write", real_atomic_write)
    assert json.loads(cache.read_text()) == {"old": 1}
    cache.write_text('{"old": ')  # cut short by an older version: recomputed, not a traceback
    assert eval_goals.main(argv) == 0
    assert json.loads(cache.read_text()) == {"solo-real/t": {"new": True}}


def test_everything_is_checked_before_any_work_each_problem_one_line(tmp_path, monkeypatch, capsys):
    # each was a traceback (after minutes of separation for some), or, for a --data folder
    # without any of the splits, an empty results file and status 0
    from chimera.models import SeparationModel, preset, save_checkpoint
    monkeypatch.setattr(eval_goals, "predict", lambda *a: pytest.fail("predict ran"))
    data = tmp_path / "musdb"
    _write(data / "solo-real" / "t", _tone_track(seconds=0.1))
    stft = dict(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann")
    drums = tmp_path / "drums.pt"
    save_checkpoint(drums, SeparationModel(preset("chimerapp", "small", hidden=8, layers=1, embedding_dim=4, stft=stft,
                                                  source_names=["drums", "bass"])))
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "r" / "r.json"
    base = ["--data", str(data), "--out", str(out), "--splits", "solo-real"]
    for argv, why in (
            (["--data", str(tmp_path / "none"), "--out", str(out)], "--data .*none: no such folder"),
            ([*base[:3], str(tmp_path)], "--out .*: is a folder"),
            ([*base[:3], str(tmp_path / "a-file" / "r.json")], "--out .*a-file is not a writable folder"),
            ([*base, "--oracle-cache", str(tmp_path)], "--oracle-cache .*: is a folder"),
            ([*base, "--oracle-cache", str(out)], "the oracle cache would be replaced by the results"),
            ([*base, "solo-real"], "--splits: solo-real is given more than once"),
            ([*base, "--oracle-stft", "{bad"], "--oracle-stft {bad: Expecting property name"),
            ([*base, "--oracle-stft", '{"n_fft": 3}'], "--oracle-stft .*hop_length must be"),
            ([*base, "--oracle-stft", "[1]"], "--oracle-stft .*a JSON object expected"),
            ([*base, "--predict-args", '"--wiener 0'], "--predict-args .*No closing quotation"),
            ([*base, "--model", str(tmp_path / "missing.pt")], "--model: .*missing.pt: no such checkpoint file"),
            ([*base, "--model", str(tmp_path)], "--model: .*is a folder, not a checkpoint file"),
            ([*base, "--model", str(drums)], r"--model .*drums.pt: its sources \['drums', 'bass'\] are not"),
            ([*base[:5], "solo-none", "test-none"], ".*musdb: none of the splits solo-none test-none is there")):
        with pytest.raises(SystemExit, match=f"^eval_goals: (.* )?{why}"):
            eval_goals.main(argv)
    for bad in ("nan", "-1", "0", "inf"):
        with pytest.raises(SystemExit) as exc:
            eval_goals.main([*base, "--high-hz", bad])
        assert exc.value.code == 2
    # a bad track in a later split is found before the first split is separated
    _write(data / "test-real" / "t", _tone_track(seconds=0.1))
    (data / "test-real" / "t" / "vocals.wav").write_text("not audio")
    with pytest.raises(SystemExit, match=r"^eval_goals: .*test-real/t/vocals\.wav: not a readable audio file"):
        eval_goals.main([*base, "test-real"])
    assert not (tmp_path / "r").exists() and capsys.readouterr().out == ""


def test_a_file_the_headers_do_not_give_away_is_one_line(tmp_path, monkeypatch):
    track = _tone_track(seconds=0.1)
    track.references[0, 0, 7] = np.nan
    _write(tmp_path / "musdb" / "solo-real" / "t", track)
    monkeypatch.setattr(eval_goals, "predict", lambda split_dir, names, work, model, extra: (work, 0.0))
    args = argparse.Namespace(model=None, predict_args="", high_hz=8000.0, oracle_stft="{}")
    with pytest.raises(SystemExit, match=r"^eval_goals: .*solo-real/t/vocals\.wav: NaN/Inf sample"):
        eval_goals.evaluate_split(tmp_path / "musdb", "solo-real", args, {})


def test_a_silent_input_has_undefined_figures_not_a_traceback():
    # a silent mixture divided by zero; no input energy above the cutoff gave the outputs'
    # energy there over 1e-30 (0 %, or a share of 10^26); max() kept or dropped a NaN by its place
    silent = Track("t", np.zeros((2, 4410), np.float32), np.zeros((2, 2, 4410), np.float32), 44100)
    fig = eval_goals.band_figures(silent, silent.references, 8000.0)
    assert np.isnan(fig["reconstruction_db"]) and all(np.isnan(v) for v in fig["high_band_share"].values())
    # a 16 kHz track has no band above 8 kHz: not "0 % of it comes back"
    low = _tone_track(rate=16000)
    assert all(np.isnan(v) for v in eval_goals.band_figures(low, low.references, 8000.0)["high_band_share"].values())
    tracks = {f"t{i}": {"reconstruction_db": r, "high_band_share": {"vocals": 0.1, "accompaniment": 0.9},
                        "leak_db": -20.0} for i, r in enumerate([np.nan, -30.0, -40.0])}
    s = eval_goals.summarise("solo-real", {"tracks": tracks})
    assert s["reconstruction_db_worst"] == -30.0 and s["reconstruction_db"] == -35.0


def test_the_tables_band_is_the_one_measured():
    summary = {"solo-real": {"tracks": 1, "reconstruction_db": -30.0, "reconstruction_db_worst": -30.0,
                             "high_band_pct": {}, "high_band_sum_pct": 99.0, "leak_db": -20.0}}
    assert "| >8 kHz out/in |" in eval_goals.table(summary)
    assert "| >4 kHz out/in |" in eval_goals.table(summary, 4000.0)
