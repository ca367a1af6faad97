"""tools/choose_checkpoint.py: its leak figure, and one run over a small validation folder
comparing numbers of Wiener iterations and exponents, and inference methods."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from chimera.models import SeparationModel, preset, save_checkpoint
from test_choose_segment import noise_tracks
from test_separate import tiny_model
from tools import choose_checkpoint


def test_leak_is_the_silent_outputs_energy_over_the_input():
    played = np.ones((2, 100))
    estimates = np.stack([played, 0.1 * played])  # output 1 carries 1 % of the energy
    assert choose_checkpoint.leak_db(estimates, 1, played) == pytest.approx(-20.0)
    assert choose_checkpoint.leak_db(estimates, 0, played) == pytest.approx(0.0)


@pytest.fixture
def folder(tmp_path):
    noise_tracks(tmp_path / "valid", seed=2)
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, tiny_model())
    return tmp_path / "valid", model


def test_a_row_per_wiener_iteration_count_and_exponent(folder, capsys):
    data, model = folder
    assert choose_checkpoint.main(["--data", str(data), "--models", str(model), "--wiener", "0", "1",
                                   "--wiener-exponent", "1", "0.5", "--misi", "0", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {model} |")]
    assert len(rows) == 8
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    settings = [(w, e, m) for w in (0, 1) for e in (1.0, 0.5) for m in (0, 2)]
    assert all(c[1] == "default" for c in cells)
    assert [(int(c[2]), float(c[3]), int(c[4])) for c in cells] == settings
    values = {setting: c[5:] for setting, c in zip(settings, cells)}
    for (iters, exponent, misi), v in values.items():
        # each row is what scores() gives for that setting, on the same model
        expected = choose_checkpoint.scores(str(model), str(data), iters, exponent, misi_iters=misi)
        assert [float(x) for x in v] == pytest.approx([round(x, 2) for x in expected.values()], abs=0.006)
    assert values[0, 1.0, 0] == values[0, 0.5, 0]  # without the Wiener step the exponent does nothing
    assert values[0, 1.0, 0] != values[1, 1.0, 0]  # the Wiener step changes the estimates
    assert values[1, 1.0, 0] != values[1, 0.5, 0]  # and so does its exponent
    assert values[1, 1.0, 0] != values[1, 1.0, 2]  # and MISI


def test_a_row_per_method(folder, capsys):
    data, model = folder
    assert choose_checkpoint.main(["--data", str(data), "--models", str(model), "--method", "mask", "kmeans"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {model} |")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[1] for c in cells] == ["mask", "kmeans"]
    for c in cells:
        expected = choose_checkpoint.scores(str(model), str(data), method=c[1])
        assert [float(x) for x in c[5:]] == pytest.approx([round(x, 2) for x in expected.values()], abs=0.006)
    assert cells[0][5:] != cells[1][5:]


def test_a_model_with_other_than_two_sources_is_refused(tmp_path):
    torch.manual_seed(0)
    cfg = preset("chimerapp", "small", hidden=8, layers=1, embedding_dim=4,
                 stft=dict(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann"),
                 n_sources=3, source_names=["vocals", "bass", "drums"])
    model = tmp_path / "three.pt"
    save_checkpoint(model, SeparationModel(cfg))
    with pytest.raises(SystemExit, match="two-source model"):
        choose_checkpoint.main(["--data", str(tmp_path), "--models", str(model)])


def test_folders_pool_their_tracks_and_kinds_group_them(folder, tmp_path, capsys):
    data, model = folder
    other = tmp_path / "valid48"
    noise_tracks(other, seed=5)
    for d, kind in ((data, "speech"), (other, "sung")):
        (d / "metadata.json").write_text(json.dumps([{"name": "t0", "kind": kind}, {"name": "t1", "kind": kind}]))
    alone = {d: choose_checkpoint.scores(str(model), str(d)) for d in (data, other)}
    pooled = choose_checkpoint.scores(str(model), [str(data), str(other)], by_kind=True)
    for s in ("vocals", "accompaniment"):
        # each kind's column is its folder's own median; the pooled one lies between them
        assert pooled[f"{s} SI-SDRi (speech)"] == pytest.approx(alone[data][f"{s} SI-SDRi"])
        assert pooled[f"{s} SI-SDRi (sung)"] == pytest.approx(alone[other][f"{s} SI-SDRi"])
        lo, hi = sorted(alone[d][f"{s} SI-SDRi"] for d in (data, other))
        assert lo - 1e-9 <= pooled[f"{s} SI-SDRi"] <= hi + 1e-9
    assert list(pooled)[:4] == list(alone[data])  # the usual columns first, then the kinds
    assert choose_checkpoint.main(["--data", str(data), str(other), "--by-kind", "--models", str(model)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "vocals SI-SDRi (sung) (dB)" in header and "accompaniment SI-SDRi (speech) (dB)" in header
    (other / "metadata.json").unlink()
    with pytest.raises(SystemExit, match="metadata.json: no track kinds"):
        choose_checkpoint.scores(str(model), [str(data), str(other)], by_kind=True)


def test_a_held_out_split_is_refused(folder, tmp_path):
    _, model = folder
    noise_tracks(tmp_path / "musdb" / "solo-real", seed=3)
    with pytest.raises(SystemExit, match="held-out"):
        choose_checkpoint.scores(str(model), [str(folder[0]), str(tmp_path / "musdb" / "solo-real")])


def test_a_track_with_a_silent_stem_is_left_out_of_that_stems_medians(folder, tmp_path):
    # an instrumental among the validation tracks: its vocals have no SI-SDRi and, played
    # alone, no leak (nothing played); one NaN made the whole column NaN
    data, model = folder
    with_solo = tmp_path / "with-solo"
    noise_tracks(with_solo, seed=2, count=3)  # t0, t1 as in `data`, then t2
    acc, rate = sf.read(with_solo / "t2" / "accompaniment.wav", dtype="float32")
    sf.write(with_solo / "t2" / "vocals.wav", np.zeros_like(acc), rate, subtype="FLOAT")
    sf.write(with_solo / "t2" / "mixture.wav", acc, rate, subtype="FLOAT")
    two, three = (choose_checkpoint.scores(str(model), str(d)) for d in (data, with_solo))
    assert three["vocals SI-SDRi"] == two["vocals SI-SDRi"]
    assert three["vocals alone: leak"] == two["vocals alone: leak"]
    assert all(np.isfinite(v) for v in three.values())
    # whatever comes out of silence, nothing was played: undefined, not +inf (kept as the highest)
    assert np.isnan(choose_checkpoint.leak_db(np.ones((2, 2, 4)), 1, np.zeros((2, 4))))


def test_every_checkpoint_setting_and_folder_is_checked_before_any_row(folder, tmp_path, capsys, monkeypatch):
    # a missing second checkpoint, a bad setting, a bad second folder stopped the run (as a
    # traceback) after the rows of the first checkpoint had been computed and printed
    data, model = folder
    torch.manual_seed(0)
    drums = tmp_path / "drums.pt"
    save_checkpoint(drums, SeparationModel(preset(
        "chimerapp", "small", hidden=8, layers=1, embedding_dim=4,
        stft=dict(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann"), source_names=["drums", "bass"])))
    no_dc = tmp_path / "mask-only.pt"
    save_checkpoint(no_dc, SeparationModel(preset(
        "chimerapp", "small", hidden=8, layers=1, embedding_dim=0,
        stft=dict(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann"),
        source_names=["vocals", "accompaniment"])))
    separated = []
    monkeypatch.setattr(choose_checkpoint.Separator, "separate", lambda *a: separated.append(a))
    (tmp_path / "bad").mkdir()
    base = ["--data", str(data)]
    for argv, why in (
            ([*base, "--models", str(model), str(tmp_path / "missing.pt")], "missing.pt: no such checkpoint file"),
            ([*base, "--models", str(model), str(data)], "valid: is a folder, not a checkpoint file"),
            ([*base, "--models", str(model), str(drums)], r"drums.pt: its sources \['drums', 'bass'\] are not"),
            ([*base, "--models", str(model), str(tmp_path / "." / "tiny.pt")], "--models: .* more than once"),
            ([*base, str(data) + "/", "--models", str(model)], "--data: .* more than once"),
            ([*base, "--models", str(model), "--wiener", "0", "0"], "--wiener: 0 is given more than once"),
            ([*base, "--models", str(model), str(no_dc), "--method", "kmeans"], "mask-only.pt: .*no embedding head"),
            ([*base, str(tmp_path / "bad"), "--models", str(model)], r"bad: no <track>/mixture\.wav"),
            ([*base, str(tmp_path / "none"), "--models", str(model)], "none: no such folder"),
            ([*base, "--by-kind", "--models", str(model)], "metadata.json: no track kinds")):
        with pytest.raises(SystemExit, match=why):
            choose_checkpoint.main(argv)
    for option, bad in (("--wiener", "-1"), ("--misi", "1.5"), ("--wiener-exponent", "nan"),
                        ("--wiener-exponent", "0"), ("--wiener-exponent", "inf")):  # argparse's line, status 2
        with pytest.raises(SystemExit) as exc:
            choose_checkpoint.main([*base, "--models", str(model), option, bad])
        assert exc.value.code == 2
    assert not separated and capsys.readouterr().out == ""


def test_a_track_that_cannot_be_read_and_malformed_kinds_are_one_line(folder):
    data, model = folder
    (data / "metadata.json").write_text(json.dumps({"t0": "speech"}))  # not a list: a traceback
    with pytest.raises(SystemExit, match="metadata.json: no track kinds to group by"):
        choose_checkpoint.scores(str(model), str(data), by_kind=True)
    x, rate = sf.read(data / "t1" / "mixture.wav", dtype="float32")
    x[3, 1] = np.inf
    sf.write(data / "t1" / "mixture.wav", x, rate, subtype="FLOAT")
    with pytest.raises(SystemExit, match=r"t1/mixture\.wav: NaN/Inf sample"):
        choose_checkpoint.main(["--data", str(data), "--models", str(model)])


def test_models_are_compared_on_the_columns_of_their_sources(folder, tmp_path, capsys):
    # a second model with its sources in the other order: each cell is its own source's figure
    data, model = folder
    torch.manual_seed(3)
    flipped = tmp_path / "flipped.pt"
    save_checkpoint(flipped, SeparationModel(preset(
        "chimerapp", "small", hidden=16, layers=1, embedding_dim=4,
        stft=dict(sample_rate=8000, n_fft=256, hop_length=64, window="sqrt_hann"),
        source_names=["accompaniment", "vocals"])))
    assert choose_checkpoint.main(["--data", str(data), "--models", str(model), str(flipped)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines if line.startswith(f"| {flipped} |"))
    cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))
    expected = choose_checkpoint.scores(str(flipped), str(data))
    for key, value in expected.items():
        assert float(cells[f"{key} (dB)"]) == pytest.approx(value, abs=0.006)
