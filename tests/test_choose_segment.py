"""tools/choose_segment.py: its score, and one run over a small validation folder."""
import numpy as np
import pytest
import soundfile as sf

from chimera.models import save_checkpoint
from test_separate import tiny_model
from tools import choose_segment
from tools.demodata.tracks import HELD_OUT_SPLITS


def test_improvement_is_over_the_mixture():
    rng = np.random.default_rng(0)
    ref, other = rng.standard_normal((2, 2, 4000))
    mix = ref + other
    assert abs(choose_segment.improvement(mix, ref, mix)) < 1e-12
    assert choose_segment.improvement(ref + 0.01 * other, ref, mix) > 30


def noise_tracks(folder, seed, count=2, seconds=3, rate=8000):
    """``count`` tracks of stereo noise stems and their mixture in ``folder/t<k>/``."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        track = folder / f"t{k}"
        track.mkdir(parents=True)
        stems = {s: (0.1 * rng.standard_normal((rate * seconds, 2))).astype(np.float32)
                 for s in ("vocals", "accompaniment")}
        for s, x in stems.items():
            sf.write(track / f"{s}.wav", x, rate, subtype="FLOAT")
        sf.write(track / "mixture.wav", stems["vocals"] + stems["accompaniment"], rate, subtype="FLOAT")


def test_a_row_per_segment_length(tmp_path, capsys):
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, tiny_model())
    noise_tracks(tmp_path / "valid", seed=1)
    assert choose_segment.main(["--data", str(tmp_path / "valid"), "--model", str(model), "--segments", "2.5", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| 2.5 |", "| 4 |"))]
    assert len(rows) == 2 and "2 tracks of 3.0 s" in out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(np.isfinite(float(c)) for c in cells[1:])


def test_a_held_out_split_or_a_datasets_root_is_refused(tmp_path):
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, tiny_model())
    noise_tracks(tmp_path / "musdb" / "test-real", seed=1)
    with pytest.raises(SystemExit, match="held-out"):
        choose_segment.main(["--data", str(tmp_path / "musdb" / "test-real"), "--model", str(model)])
    # a MUSDB18-HQ root: chimera.evaluate finds its test split there
    noise_tracks(tmp_path / "root" / "test", seed=1)
    with pytest.raises(SystemExit, match="held-out"):
        choose_segment.main(["--data", str(tmp_path / "root"), "--model", str(model)])


def test_held_out_knows_every_held_out_split_the_demo_data_has():
    # choose_segment restates the names (it also runs as a script): kept in step here
    assert all(choose_segment.held_out(f"demo-data/musdb/{n}") for n in HELD_OUT_SPLITS)
    assert not choose_segment.held_out("demo-data/musdb/valid") and not choose_segment.held_out("valid48")


def test_a_track_with_a_silent_stem_leaves_the_column_a_number(tmp_path, capsys):
    # an instrumental's vocals have no SI-SDRi (NaN): left out of the median, not its result
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, tiny_model())
    noise_tracks(tmp_path / "valid", seed=1, count=3)
    acc, rate = sf.read(tmp_path / "valid" / "t2" / "accompaniment.wav", dtype="float32")
    sf.write(tmp_path / "valid" / "t2" / "vocals.wav", np.zeros_like(acc), rate, subtype="FLOAT")
    sf.write(tmp_path / "valid" / "t2" / "mixture.wav", acc, rate, subtype="FLOAT")
    assert choose_segment.main(["--data", str(tmp_path / "valid"), "--model", str(model), "--segments", "2.5"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2.5 |"))
    assert all(np.isfinite(float(c)) for c in row.strip("|").split("|")[1:])


def test_a_link_to_a_held_out_split_is_refused_and_a_missing_folder_is_one_line(tmp_path):
    noise_tracks(tmp_path / "musdb" / "test-real", seed=1)
    (tmp_path / "my-valid").symlink_to(tmp_path / "musdb" / "test-real")
    with pytest.raises(SystemExit, match="held-out"):
        choose_segment.validation_tracks(str(tmp_path / "my-valid"), ["vocals", "accompaniment"])
    with pytest.raises(SystemExit, match="no such folder"):
        choose_segment.validation_tracks(str(tmp_path / "missing"), ["vocals", "accompaniment"])


def _nan_sample(path):
    x, rate = sf.read(path, dtype="float32")
    x[5, 0] = np.nan
    sf.write(path, x, rate, subtype="FLOAT")


def test_bad_values_are_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    # a missing or folder checkpoint, a track with NaN samples were tracebacks; a segment too
    # short for the cross-fade stopped the run after the rows of the others
    model = tmp_path / "tiny.pt"
    save_checkpoint(model, tiny_model())
    noise_tracks(tmp_path / "valid", seed=1)
    data = ["--data", str(tmp_path / "valid")]
    for spec, why in ((tmp_path / "missing.pt", "missing.pt: no such checkpoint file"),
                      (tmp_path / "valid", "valid: is a folder, not a checkpoint file"),
                      ("no-such-bundled-name", "no bundled model")):
        with pytest.raises(SystemExit, match=f"^choose_segment: .*{why}"):
            choose_segment.main([*data, "--model", str(spec)])
    for bad in ("0", "-1", "nan", "inf", "ten"):  # argparse's one line, status 2
        with pytest.raises(SystemExit) as exc:
            choose_segment.main([*data, "--model", str(model), "--segments", "3", bad])
        assert exc.value.code == 2
    assert "is not a finite number of seconds > 0" in capsys.readouterr().err
    separated = []
    monkeypatch.setattr(choose_segment.Separator, "separate", lambda *a: separated.append(a))
    with pytest.raises(SystemExit, match=r"^choose_segment: --segments 1\.5: overlap"):
        choose_segment.main([*data, "--model", str(model), "--segments", "3", "1.5"])
    with pytest.raises(SystemExit, match=r"^--segments: 3 is given more than once"):
        choose_segment.main([*data, "--model", str(model), "--segments", "3", "4", "3.0"])
    assert not separated and capsys.readouterr().out == ""
    _nan_sample(tmp_path / "valid" / "t1" / "vocals.wav")
    with pytest.raises(SystemExit, match=r"t1/vocals\.wav: NaN/Inf sample"):
        choose_segment.main([*data, "--model", str(model), "--segments", "3"])


def test_the_default_segments_are_distinct_and_hold_the_separators():
    # "10, DEFAULT_SEGMENT, 30" ran 10 s twice once the Separator's default became 10 s
    defaults = choose_segment.DEFAULT_SEGMENTS
    assert len(set(defaults)) == len(defaults) and choose_segment.DEFAULT_SEGMENT in defaults
    assert all(d >= 2 for d in defaults)
