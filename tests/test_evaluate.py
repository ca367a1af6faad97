"""`chimera evaluate`: museval BSS Eval v4 + SI-SDR, oracles, outputs, the MUSDB18-HQ and
DSD100 layouts, references from stems, tracks in parallel, museval's own JSON."""
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from chimera.audio import AudioError
from chimera.evaluate import Track, _evaluate_track, evaluate, list_tracks, oracle_estimates
from chimera.models import SeparationModel, preset, save_checkpoint
from test_separate import run_cli as _run_cli

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


@pytest.fixture
def run_cli(capsys, one_thread):
    """`chimera evaluate ARGS` in this process (see test_separate.run_cli)."""
    return lambda *args: _run_cli(capsys, "evaluate", *args)


def independent_irm_sdr(refs):
    """Per-source median-over-windows SDR of the IRM oracle of `refs` (C, L, channels) with
    the model's STFT (8 kHz, n_fft 256, hop 64, Hann) at the data's own rate, computed
    apart from chimera: |S_c| / Σ|S_j| on torch.stft, inverted with torch.istft, museval."""
    C, L, ch = refs.shape
    w = torch.hann_window(256, dtype=torch.float64)
    S = torch.stft(torch.from_numpy(refs).double().permute(0, 2, 1).reshape(-1, L), 256, 64,
                   window=w, return_complex=True).reshape(C, ch, 129, -1)
    X = S.sum(0)
    masks = S.abs() / S.abs().sum(0).clamp_min(1e-12)
    est = torch.istft((masks * X).reshape(C * ch, 129, -1), 256, 64, window=w, length=L)
    est = est.reshape(C, ch, -1).permute(0, 2, 1).numpy()
    sdr, isr, sir, sar = museval.evaluate(refs, est, win=RATE, hop=RATE)
    return np.nanmedian(sdr, axis=1)


def test_oracle_scores_equal_an_independent_computation(dataset, model_file, tmp_path, run_cli):
    out = run_cli(dataset, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json", "--quiet")
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    per_track = []
    for k in range(2):
        refs = np.stack([sf.read(dataset / f"track{k}" / f"{s}.wav", dtype="float32")[0] for s in ("vocals", "accompaniment")])
        per_track.append(independent_irm_sdr(refs))
    want = np.median(np.stack(per_track), 0)
    got = [results["summary"][s]["SDR"] for s in ("vocals", "accompaniment")]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert got[0] > 10  # an oracle on a tone over noise is far above the mixture
    assert (tmp_path / "r.csv").exists()


def test_model_mixture_and_plot(dataset, model_file, tmp_path, run_cli):
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


def test_an_instrumental_track_is_left_out_of_bss_eval_not_the_run(dataset, model_file, tmp_path, run_cli):
    # a track whose vocals are silent: museval refuses it (every reference must sound), so its
    # BSS Eval figures and the silent source's SI-SDR are undefined; the other tracks are
    # scored as without it, and the museval folder holds only what museval can read
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    acc = sf.read(data / "track1" / "accompaniment.wav", dtype="float32")[0]
    sf.write(data / "track1" / "vocals.wav", np.zeros_like(acc), RATE, subtype="FLOAT")
    sf.write(data / "track1" / "mixture.wav", acc, RATE, subtype="FLOAT")
    out = run_cli(data, "--model", model_file, "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "track1: vocals silent" in warnings[0], out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    shutil.copytree(dataset / "track0", tmp_path / "only0" / "track0")
    assert run_cli(tmp_path / "only0", "--model", model_file, "--out", tmp_path / "one.json", "--quiet").returncode == 0
    one = json.loads((tmp_path / "one.json").read_text())
    track1 = results["tracks"][1]["scores"]
    assert all(v is None for v in track1["vocals"].values())
    assert all(track1["accompaniment"][m] is None for m in ("SDR", "SIR", "SAR", "ISR"))
    assert np.isfinite(track1["accompaniment"]["SI-SDR"])  # the sounding source keeps its SI-SDR
    for s in ("vocals", "accompaniment"):
        for m in ("SDR", "SIR", "SAR", "ISR"):  # the medians are track0's alone
            assert results["summary"][s][m] == pytest.approx(one["summary"][s][m], abs=1e-6)
    store = museval.EvalStore()
    store.add_eval_dir(tmp_path / "r.museval")
    assert sorted(store.df["track"].unique()) == ["track0"]


def test_silent_estimates_panned_and_cancelling_stems_and_stale_museval_files(dataset, model_file, tmp_path,
                                                                                 run_cli):
    # museval refuses a source whose channels sum to zero at every sample, reference or
    # estimate: such a track is left out of BSS Eval with a warning (not the run), and a
    # museval file an earlier run wrote for it is removed; SI-SDR averages the channels
    # where the reference sounds (a hard-panned voice has one)
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    assert run_cli(data, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json",
                   "--quiet").returncode == 0
    assert list((tmp_path / "r.museval").rglob("track1.json"))
    voc = sf.read(data / "track1" / "vocals.wav", dtype="float32")[0]
    acc = sf.read(data / "track1" / "accompaniment.wav", dtype="float32")[0]
    voc[:, 1] = -voc[:, 0]                                        # L = -R: museval's "silent"
    sf.write(data / "track1" / "vocals.wav", voc, RATE, subtype="FLOAT")
    sf.write(data / "track1" / "mixture.wav", voc + acc, RATE, subtype="FLOAT")
    panned = sf.read(data / "track0" / "vocals.wav", dtype="float32")[0]
    panned[:, 1] = 0                                              # hard left
    acc0 = sf.read(data / "track0" / "accompaniment.wav", dtype="float32")[0]
    sf.write(data / "track0" / "vocals.wav", panned, RATE, subtype="FLOAT")
    sf.write(data / "track0" / "mixture.wav", panned + acc0, RATE, subtype="FLOAT")
    out = run_cli(data, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert "track1: vocals silent" in out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    t0, t1 = (t["scores"] for t in results["tracks"])
    assert all(t1["vocals"][m] is None for m in ("SDR", "SIR", "SAR", "ISR"))
    assert np.isfinite(t1["vocals"]["SI-SDR"])                    # its channels each sound
    assert all(np.isfinite(v) for v in t0["vocals"].values())     # panned: every figure finite
    assert not list((tmp_path / "r.museval").rglob("track1.json"))
    # an all-zero estimate: the IBM oracle gives a source that never wins a bin nothing
    quiet = tmp_path / "quiet"
    shutil.copytree(dataset, quiet)
    acc = sf.read(quiet / "track0" / "accompaniment.wav", dtype="float32")[0]
    sf.write(quiet / "track0" / "vocals.wav", 1e-3 * acc, RATE, subtype="FLOAT")
    sf.write(quiet / "track0" / "mixture.wav", 1.001 * acc, RATE, subtype="FLOAT")
    ibm = run_cli(quiet, "--model", model_file, "--oracle", "ibm", "--out", tmp_path / "ibm.json")
    assert ibm.returncode == 0, ibm.stderr
    assert "track0: the vocals estimate is silent" in ibm.stderr
    scores = json.loads((tmp_path / "ibm.json").read_text())["tracks"][0]["scores"]
    assert scores["vocals"]["SDR"] is None and scores["vocals"]["SI-SDR"] is None   # -inf: nothing recovered


def test_the_irm_oracle_masks_the_mixture_not_the_sum_of_the_references(tmp_path, model_file):
    # references that do not add up to the mixture (a target naming some stems only): the
    # oracle's estimates still add up to the mixture
    from chimera.models import StftConfig
    rng = np.random.default_rng(3)
    mixture = (0.1 * rng.standard_normal((2, 2 * RATE))).astype(np.float32)
    refs = np.stack([0.3 * mixture, 0.2 * mixture]).astype(np.float32)       # half of it missing
    est = oracle_estimates(Track("t", mixture, refs, RATE), "irm",
                           StftConfig(sample_rate=RATE, n_fft=256, hop_length=64, window="sqrt_hann"))
    np.testing.assert_allclose(est.sum(0), mixture, atol=1e-5)


def test_output_paths_are_checked_before_any_scoring(dataset, model_file, tmp_path, run_cli):
    (tmp_path / "afile").write_text("")
    for args, problem in ((["--out", tmp_path / "r.csv"], "would replace the results JSON"),
                          (["--out", tmp_path / "afile" / "r.json"], "is not a writable folder"),
                          (["--plot", tmp_path / "h.jpgx"], "unknown image format 'jpgx'"),
                          (["--out", tmp_path], "is a folder, not a file name"),
                          (["--museval-dir", tmp_path / "afile"], "afile: is a file, not a folder")):
        out = run_cli(dataset, "--model", model_file, "--oracle", "irm", *args)
        assert out.returncode == 2 and problem in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_a_bad_stem_stops_the_run_before_any_estimate_and_a_folder_without_mixture_is_named(dataset, model_file,
                                                                                             tmp_path, run_cli):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    acc = sf.read(data / "track1" / "accompaniment.wav", dtype="float32")[0]
    sf.write(data / "track1" / "accompaniment.wav", acc[:-100], RATE, subtype="FLOAT")   # 100 samples short
    out = run_cli(data, "--model", model_file, "--oracle", "irm", "--save-estimates", tmp_path / "est",
                  "--out", tmp_path / "r.json")
    assert out.returncode != 0 and "track1/accompaniment.wav: 2 channels x 23900 samples" in out.stderr, out.stderr
    assert not (tmp_path / "est").exists() and not (tmp_path / "r.json").exists()
    sf.write(data / "track1" / "accompaniment.wav", acc, RATE, subtype="FLOAT")
    (data / "track1" / "mixture.wav").unlink()
    out = run_cli(data, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert "track1: no mixture.wav or mixture.flac: not scored" in out.stderr
    assert [t["track"] for t in json.loads((tmp_path / "r.json").read_text())["tracks"]] == ["track0"]


def test_bad_data_dir_is_one_line(tmp_path, model_file, run_cli):
    out = run_cli(tmp_path / "nothing", "--model", model_file)
    assert out.returncode != 0 and "no such folder" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "t").mkdir()
    sf.write(tmp_path / "t" / "mixture.wav", np.zeros(800), RATE)
    out = run_cli(tmp_path, "--model", model_file)
    assert out.returncode != 0 and "vocals.wav" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------------- real layouts

STEMS = ("vocals", "drums", "bass", "other")


def _stems(seed, n=3 * RATE):
    """Stereo stems on the 24-bit grid (so wav and flac hold exactly these samples), each with
    some noise (pure tones make BSS Eval's distortion filters ill-conditioned)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE

    def hiss(level):
        return level * rng.standard_normal((2, n))

    stems = {"vocals": np.array([[0.8], [0.4]]) * 0.2 * np.sin(2 * np.pi * (300 + 40 * seed) * t) + hiss(0.01),
             "drums": hiss(0.1) * (np.sin(2 * np.pi * 2 * t) > 0.6),
             "bass": 0.15 * np.sin(2 * np.pi * 70 * t) + hiss(0.01),
             "other": hiss(0.05)}
    return {k: np.round(v * 2 ** 23) / 2 ** 23 for k, v in stems.items()}


def _write_track(mixture_path, stem_dir, seed, ext):
    stems = _stems(seed)
    stem_dir.mkdir(parents=True, exist_ok=True)
    mixture_path.parent.mkdir(parents=True, exist_ok=True)
    for name, x in stems.items():
        sf.write(stem_dir / f"{name}{ext}", x.T, RATE, subtype="PCM_24")
    sf.write(mixture_path, sum(stems.values()).T, RATE, subtype="PCM_24")


@pytest.fixture(scope="module")
def musdb(tmp_path_factory):
    """MUSDB18-HQ's root: train/A, test/B and test/C, wav."""
    root = tmp_path_factory.mktemp("musdb18hq")
    for split, name, seed in (("train", "A", 0), ("test", "B", 1), ("test", "C", 2)):
        _write_track(root / split / name / "mixture.wav", root / split / name, seed, ".wav")
    return root


@pytest.fixture(scope="module")
def dsd100(tmp_path_factory):
    """The same tracks in DSD100's layout (Mixtures/Sources, Dev/Test), flac."""
    root = tmp_path_factory.mktemp("DSD100")
    for split, name, seed in (("Dev", "A", 0), ("Test", "B", 1), ("Test", "C", 2)):
        _write_track(root / "Mixtures" / split / name / "mixture.flac", root / "Sources" / split / name, seed, ".flac")
    return root


def _read(folder, name):
    return sf.read(folder / f"{name}.wav", dtype="float32")[0]


def test_musdb18hq_root_and_its_accompaniment(musdb, model_file, tmp_path, run_cli):
    default = run_cli(musdb, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "d.json", "--quiet")
    stems = run_cli(musdb, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "s.json", "--quiet",
                    "--targets", "accompaniment=drums+bass+other")
    assert default.returncode == stems.returncode == 0, default.stderr + stems.stderr
    d, s = (json.loads((tmp_path / f).read_text()) for f in ("d.json", "s.json"))
    assert [t["track"] for t in d["tracks"]] == ["B", "C"]          # the test split by default
    assert d["references"] == {"vocals": "vocals", "accompaniment": "mixture-vocals"}
    assert s["references"] == {"vocals": "vocals", "accompaniment": "drums+bass+other"}
    per_track = []
    for name in ("B", "C"):
        folder = musdb / "test" / name
        refs = np.stack([_read(folder, "vocals"), sum(_read(folder, x) for x in ("drums", "bass", "other"))])
        per_track.append(independent_irm_sdr(refs))
    want = np.median(np.stack(per_track), 0)
    assert d["summary"] == s["summary"]  # the mixture is the sum of the stems: mixture - vocals = the others
    for results in (d, s):
        np.testing.assert_allclose([results["summary"][x]["SDR"] for x in ("vocals", "accompaniment")], want,
                                   atol=1e-3)
    train = run_cli(musdb, "--model", model_file, "--oracle", "mixture", "--split", "train", "--out",
                    tmp_path / "t.json", "--quiet")
    assert train.returncode == 0, train.stderr
    assert [t["track"] for t in json.loads((tmp_path / "t.json").read_text())["tracks"]] == ["A"]


def test_dsd100_in_flac_scores_as_the_same_tracks_in_musdb18hq(musdb, dsd100, model_file, tmp_path, run_cli):
    args = ["--model", model_file, "--oracle", "irm", "--targets", "accompaniment=drums+bass+other", "--quiet"]
    assert run_cli(dsd100, *args, "--out", tmp_path / "dsd.json").returncode == 0
    assert run_cli(musdb, *args, "--out", tmp_path / "musdb.json").returncode == 0
    dsd, mus = (json.loads((tmp_path / f).read_text()) for f in ("dsd.json", "musdb.json"))
    assert [t["track"] for t in dsd["tracks"]] == ["B", "C"]        # DSD100's Test split by default
    for a, b in zip(dsd["tracks"], mus["tracks"]):
        for src in ("vocals", "accompaniment"):
            assert a["scores"][src] == b["scores"][src]                # the same samples, the same scores
    dev = run_cli(dsd100, *args, "--split", "Dev", "--out", tmp_path / "dev.json", "--museval-dir", tmp_path / "mev")
    assert dev.returncode == 0, dev.stderr
    assert json.loads((tmp_path / "dev.json").read_text())["tracks"][0]["track"] == "A"
    assert (tmp_path / "mev" / "train" / "A.json").is_file()        # DSD100 Dev is MUSDB18's train subset


def test_museval_json_beside_ours_reads_back_in_museval(musdb, model_file, tmp_path, run_cli):
    import jsonschema

    out = run_cli(musdb, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json", "--quiet")
    assert out.returncode == 0, out.stderr
    ours = json.loads((tmp_path / "r.json").read_text())
    folder = tmp_path / "r.museval"
    assert sorted(p.name for p in (folder / "test").iterdir()) == ["B.json", "C.json"]
    schema = json.loads((Path(museval.__file__).parent / "musdb.schema.json").read_text())
    for p in (folder / "test").iterdir():
        scores = json.loads(p.read_text())
        jsonschema.validate(scores, schema)
        assert [t["name"] for t in scores["targets"]] == ["vocals", "accompaniment"]
        for t in scores["targets"]:  # 3 s tracks: three 1-second windows, 1 s apart
            assert [(f["time"], f["duration"]) for f in t["frames"]] == [(0, 1), (1, 1), (2, 1)]
    store = museval.EvalStore()
    store.add_eval_dir(folder)
    theirs = store.agg_frames_tracks_scores()       # museval's own aggregation: median, median
    for src in ("vocals", "accompaniment"):
        for metric in ("SDR", "SIR", "SAR", "ISR"):
            assert theirs[(src, metric)] == pytest.approx(ours["summary"][src][metric], abs=1e-4), (src, metric)


def test_tracks_in_parallel_and_saved_estimates(musdb, model_file, tmp_path, run_cli):
    args = [musdb, "--model", model_file, "--quiet", "--wiener", "0", "-d", "cpu"]
    one = run_cli(*args, "--out", tmp_path / "one.json", "--save-estimates", tmp_path / "est1")
    two = run_cli(*args, "--out", tmp_path / "two.json", "--save-estimates", tmp_path / "est2", "-j", "2")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert [t["track"] for t in b["tracks"]] == ["B", "C"]
    for ta, tb in zip(a["tracks"], b["tracks"]):
        for src in ("vocals", "accompaniment"):
            assert ta["scores"][src] == pytest.approx(tb["scores"][src], abs=1e-3)
    mixture = sf.read(musdb / "test" / "B" / "mixture.wav", dtype="float32")[0]
    saved = {d: [sf.read(tmp_path / d / "B" / f"{s}.wav", dtype="float32") for s in ("vocals", "accompaniment")]
             for d in ("est1", "est2")}
    for (x, rate), (y, _) in zip(saved["est1"], saved["est2"]):
        assert rate == RATE and x.shape == mixture.shape
        np.testing.assert_allclose(x, y, atol=1e-5)
    refused = run_cli(*args, "--save-estimates", tmp_path / "est1")          # kept without --force
    assert refused.returncode == 1 and "exists (use --force to overwrite)" in refused.stderr
    assert refused.stdout == ""                                             # before any work
    assert run_cli(*args, "--save-estimates", tmp_path / "est1", "--force").returncode == 0


def test_without_museval_evaluate_says_what_to_install_before_any_work(tmp_path, monkeypatch, run_cli):
    monkeypatch.setitem(sys.modules, "museval", None)   # import museval now fails
    out = run_cli(tmp_path / "no-such-data")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "needs museval" in line and "pip install 'chimera-separation[eval]'" in line, line


# exit status 2 for a mistake in the command (as predict's), 1 for one in the data
@pytest.mark.parametrize("spec,problem,status", [("accompaniment=drums+piano", "no stem piano", 1),
                                                 ("drums=bass", "the model has no source 'drums'", 2),
                                                 ("accompaniment", "expected SOURCE=STEM+STEM", 2),
                                                 ("accompaniment=mixture-", "expected SOURCE=STEM+STEM", 2),
                                                 ("accompaniment=drums;accompaniment=bass",
                                                  "accompaniment is defined twice", 2)])
def test_bad_targets_are_one_line(musdb, model_file, run_cli, spec, problem, status):
    out = run_cli(musdb, "--model", model_file, "--oracle", "mixture",
                  *(a for one in spec.split(";") for a in ("--targets", one)))
    assert out.returncode == status and problem in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
        out.stderr


def test_a_model_that_does_not_load_is_exit_status_2_as_in_predict(musdb, tmp_path, run_cli):
    out = run_cli(musdb, "--model", tmp_path / "nope.pt", "--oracle", "mixture")
    assert out.returncode == 2 and "nope.pt" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_tracks_estimates_are_saved_together_or_not_at_all(musdb, tmp_path):
    # An estimate file that appears in the way after the up-front check (another run): the
    # track's other estimates must not be left behind either (they were, one by one).
    from chimera.atomic import OutputExistsError
    files = next(t for t in list_tracks(musdb / "test", ("vocals", "accompaniment")) if t.name == "B")
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "accompaniment.wav").write_bytes(b"theirs")

    def separate(mixture, rate):
        return torch.stack([torch.as_tensor(mixture) / 2] * 2)

    with pytest.raises(OutputExistsError):
        _evaluate_track(files, ("vocals", "accompaniment"), separate, None, None, str(tmp_path), force=False)
    assert sorted(p.name for p in (tmp_path / "B").iterdir()) == ["accompaniment.wav"]
    assert (tmp_path / "B" / "accompaniment.wav").read_bytes() == b"theirs"


# ---------------------------------------------------------------------- review fixes

def test_references_are_recorded_per_track_when_tracks_differ(dataset, model_file, tmp_path, run_cli):
    # track1 has no accompaniment stem: its accompaniment is the mixture minus its vocals,
    # track0's is its own stem; the results said track0's definitions for every track
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "track1" / "accompaniment.wav").unlink()
    out = run_cli(data, "--model", model_file, "--oracle", "mixture", "--out", tmp_path / "r.json", "-v")
    assert out.returncode == 0, out.stderr
    assert "track1: references: accompaniment = mixture-vocals" in out.stderr, out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert [t["references"] for t in results["tracks"]] == [
        {"vocals": "vocals", "accompaniment": "accompaniment"},
        {"vocals": "vocals", "accompaniment": "mixture-vocals"}]
    assert results["references"] == {"vocals": "vocals", "accompaniment": None}   # differs: see the tracks
    rows = list(csv.reader((tmp_path / "r.csv").read_text().splitlines()))
    assert rows[0] == ["track", "source", "SDR", "SIR", "SAR", "ISR", "SI-SDR", "reference"]
    assert [(r[0], r[1], r[-1]) for r in rows[1:]] == [
        ("track0", "vocals", "vocals"), ("track0", "accompaniment", "accompaniment"),
        ("track1", "vocals", "vocals"), ("track1", "accompaniment", "mixture-vocals")]


def test_musdb18hq_root_names_a_test_track_without_its_mixture(musdb, model_file, tmp_path, run_cli):
    # the test split found from the root: a track folder there without its mixture was
    # skipped without a word (the flat layout and --split test said so)
    root = tmp_path / "musdb"
    shutil.copytree(musdb, root)
    (root / "test" / "C" / "mixture.wav").unlink()
    out = run_cli(root, "--model", model_file, "--oracle", "mixture", "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    assert f"{root / 'test' / 'C'}: no mixture.wav or mixture.flac: not scored" in out.stderr, out.stderr
    assert [t["track"] for t in json.loads((tmp_path / "r.json").read_text())["tracks"]] == ["B"]


def test_dsd100_names_a_track_with_its_mixture_or_its_stems_only(dsd100, model_file, tmp_path, run_cli):
    # a mixture without a stems folder was skipped without a word; stems without a mixture
    # stopped the run: both are said and left out, as in the flat layout
    root = tmp_path / "DSD100"
    shutil.copytree(dsd100, root)
    shutil.rmtree(root / "Sources" / "Test" / "C")
    shutil.copytree(root / "Sources" / "Test" / "B", root / "Sources" / "Test" / "D")
    (root / "Mixtures" / "Test" / ".ipynb_checkpoints").mkdir()  # hidden: no track, no warning
    out = run_cli(root, "--model", model_file, "--oracle", "mixture", "--out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, out.stderr
    assert f"{root / 'Mixtures' / 'Test' / 'C'}: no stems folder {root / 'Sources' / 'Test' / 'C'}: not scored" \
        in warnings[0], out.stderr
    assert f"{root / 'Mixtures' / 'Test' / 'D'}: no mixture.wav or mixture.flac: not scored" in warnings[1]
    assert [t["track"] for t in json.loads((tmp_path / "r.json").read_text())["tracks"]] == ["B"]


def test_an_estimates_folder_that_cannot_be_written_is_one_line_before_any_work(dataset, model_file, tmp_path,
                                                                                 run_cli):
    # a file where the folder (or a track's folder in it) goes: a traceback once the first
    # track had been separated
    (tmp_path / "afile").write_text("")
    (tmp_path / "est").mkdir()
    (tmp_path / "est" / "track1").write_text("")
    for folder, blocked in ((tmp_path / "afile", tmp_path / "afile"),
                            (tmp_path / "est", tmp_path / "est" / "track1")):
        out = run_cli(dataset, "--model", model_file, "--oracle", "mixture", "--save-estimates", folder)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        [line] = out.stderr.strip().splitlines()
        assert f"cannot be written ({blocked} is not a writable folder)" in line, line
        assert out.stdout == ""
    assert sorted(p.name for p in (tmp_path / "est").iterdir()) == ["track1"]


def test_a_nan_estimate_is_an_error_naming_the_track_not_a_null_score(dataset, tmp_path):
    # a model that gives NaN (a diverged checkpoint): its scores were null like a silent
    # source's, without a word, and the NaN estimates were saved

    def separate(mixture, rate):
        est = torch.stack([torch.as_tensor(mixture) / 2] * 2)
        est[0, :, 100] = float("nan")
        return est

    with pytest.raises(ValueError, match=r"track0: the vocals estimate holds NaN/Inf samples"):
        evaluate(dataset, ("vocals", "accompaniment"), separate=separate, estimates_dir=tmp_path / "est")
    assert not (tmp_path / "est").exists()


def test_a_silent_estimates_si_sdr_counts_as_the_lowest_in_the_median(dataset, tmp_path):
    # a source the model leaves silent on one track recovers nothing there (SI-SDR -inf):
    # the median over tracks left that track out, as if undefined, and rose
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    shutil.copytree(data / "track0", data / "track2")
    for f in (data / "track2").iterdir():   # track0 at half the level: another SI-SDR than track1's
        sf.write(f, 0.5 * sf.read(f, dtype="float32")[0], RATE, subtype="FLOAT")
    silenced = sf.read(data / "track0" / "mixture.wav", dtype="float32")[0].T

    def separate(mixture, rate):
        est = torch.stack([torch.as_tensor(mixture) / 2] * 2)
        if np.array_equal(mixture, silenced):
            est[0] = 0
        return est

    results = evaluate(data, ("vocals", "accompaniment"), separate=separate)
    si = [t["scores"]["vocals"]["SI-SDR"] for t in results["tracks"]]
    assert si[0] == -np.inf and np.isfinite(si[1:]).all() and si[1] != si[2]
    assert results["summary"]["vocals"]["SI-SDR"] == min(si[1:])   # the middle of three


def test_the_oracles_take_a_track_shorter_than_the_window(model_file):
    # 100 samples under a 256-point window: the oracle stopped the run with the STFT's
    # "too short" error, which named no track (the model's separation pads such a track)
    from chimera.models import StftConfig
    rng = np.random.default_rng(4)
    refs = (0.1 * rng.standard_normal((2, 2, 100))).astype(np.float32)
    track = Track("t", refs.sum(0), refs, RATE)
    for kind in ("irm", "ibm"):
        est = oracle_estimates(track, kind, StftConfig(sample_rate=RATE, n_fft=256, hop_length=64))
        assert est.shape == refs.shape
        np.testing.assert_allclose(est.sum(0), track.mixture, atol=1e-5)   # the masks share the mixture


def test_a_failed_results_write_is_one_line(dataset, model_file, tmp_path, run_cli, monkeypatch):
    def full_disk(results, json_path=None, csv_path=None, museval_dir=None):
        raise OSError(28, "No space left on device", str(json_path))
    monkeypatch.setattr("chimera.evaluate.write_results", full_disk)
    out = run_cli(dataset, "--model", model_file, "--oracle", "irm", "--out", tmp_path / "r.json")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"chimera: error: {tmp_path / 'r.json'}: cannot be written " \
                                                   "(no space left on device)"


@pytest.mark.parametrize("layout", ["flat", "dsd100"])
@pytest.mark.parametrize("doubled", ["vocals", "mixture"])
def test_a_stem_in_both_wav_and_flac_is_refused_naming_both(musdb, dsd100, model_file, tmp_path, run_cli, layout,
                                                             doubled):
    # which one is the reference? The mixture took the .wav, a stem the .flac: scores of a
    # file nobody chose
    if layout == "flat":
        root = tmp_path / "musdb"
        shutil.copytree(musdb, root)
        folder = root / "test" / "B"
    else:
        root = tmp_path / "DSD100"
        shutil.copytree(dsd100, root)
        folder = root / ("Mixtures" if doubled == "mixture" else "Sources") / "Test" / "B"
    ext = ".wav" if layout == "dsd100" else ".flac"   # the other one of the layout's
    x, rate = sf.read(next(folder.glob(f"{doubled}.*")))
    sf.write(folder / f"{doubled}{ext}", 0.5 * x, rate, subtype="PCM_24")
    with pytest.raises(AudioError, match=rf"{doubled}\.(flac|wav): {doubled} is also in {doubled}\.(flac|wav)"):
        list_tracks(root, ["vocals", "accompaniment"])
    out = run_cli(root, "--model", model_file, "--oracle", "mixture", "--out", tmp_path / "r.json")
    assert out.returncode != 0 and f"{folder / doubled}." in out.stderr and "keep one file per stem" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r.json").exists()
