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
