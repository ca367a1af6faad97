"""chimera.data: layouts, resampling, segments, determinism, on-the-fly mixing, bad files,
and DataLoader workers. (The demo-data tool is tested in test_demodata.py.)"""
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader

from chimera.data import (
    DSD100,
    MUSDB18,
    AudioError,
    DemoTracks,
    FolderTuple,
    WSJ0Mix,
    audio_info,
    random_eq,
    read_audio,
    resample,
)

STEMS = ("vocals", "drums", "bass", "other")


def _write(path: Path, x: np.ndarray, sr: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), sr, subtype="FLOAT")
    return x.astype(np.float32)


def _stems(rng, n, channels=2, k=len(STEMS)):
    return [(0.2 * rng.standard_normal((n, channels))).astype(np.float32) for _ in range(k)]


def _musdb(root: Path, names=("a", "b", "c"), sr=44100, seconds=0.3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        stems = _stems(rng, int(sr * seconds))
        for s, x in zip(STEMS, stems):
            _write(root / "train" / name / f"{s}.wav", x, sr)
        _write(root / "train" / name / "mixture.wav", np.sum(stems, axis=0), sr)
        out[name] = dict(zip(STEMS, stems))
    return out


def _mono_resampled(x, sr_in, sr_out):
    return soxr.resample(x.mean(axis=1).astype(np.float32), sr_in, sr_out, quality="HQ")


GROUPS = {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}


# --- layouts ------------------------------------------------------------------------------


def test_musdb_groups_whole_tracks_match_independent_resampling(tmp_path):
    stems = _musdb(tmp_path)
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, train=False)
    assert ds.source_names == ["vocals", "accompaniment"] and len(ds) == 3
    item = ds[1]
    assert item["name"] == "b"
    s = stems["b"]
    voc = _mono_resampled(s["vocals"], 44100, 8000)
    acc = _mono_resampled(s["drums"] + s["bass"] + s["other"], 44100, 8000)
    n = item["sources"].shape[1]
    assert abs(n - len(voc)) <= 1 and item["mixture"].shape == (n,)
    torch.testing.assert_close(item["sources"][0], torch.from_numpy(voc[:n]), atol=1e-5, rtol=0)
    torch.testing.assert_close(item["sources"][1], torch.from_numpy(acc[:n]), atol=1e-5, rtol=0)
    # the mixture file (sum of all stems) is used when nothing is augmented
    torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-5, rtol=0)


def test_musdb_track_selection_and_default_targets(tmp_path):
    _musdb(tmp_path)
    ds = MUSDB18(tmp_path, "train", exclude=["a"], sample_rate=44100, segment_seconds=0.1, train=False)
    assert [t.name for t in ds.tracks] == ["b", "c"] and ds.source_names == list(STEMS)
    assert ds[0]["sources"].shape == (4, 4410)
    ds = MUSDB18(tmp_path, "train", tracks=["c"], sample_rate=44100, segment_seconds=0.1, train=False)
    assert [t.name for t in ds.tracks] == ["c"]
    with pytest.raises(ValueError, match="unknown track"):
        MUSDB18(tmp_path, "train", tracks=["zz"], sample_rate=44100)
    with pytest.raises(FileNotFoundError, match="nope"):
        MUSDB18(tmp_path, "nope", sample_rate=44100)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # a notebook's folder is no track
    ds = MUSDB18(tmp_path, "train", sample_rate=44100, segment_seconds=0.1, train=False, on_error="raise")
    assert [t.name for t in ds.tracks] == ["a", "b", "c"]



def test_musdb_pools_the_tracks_of_several_roots(tmp_path):
    first = _musdb(tmp_path / "one", names=("a", "b"), seed=0)
    second = _musdb(tmp_path / "two", names=("a", "c"), seed=1)  # "a" in both: two tracks
    ds = MUSDB18([tmp_path / "one", str(tmp_path / "two")], "train", targets=GROUPS, sample_rate=44100,
                 train=False)
    assert [t.name for t in ds.tracks] == ["0/a", "0/b", "1/a", "1/c"] and len(ds) == 4
    for i, stems in ((0, first["a"]), (2, second["a"])):  # each name reads its own root's files
        item = ds[i]
        torch.testing.assert_close(item["sources"][0], torch.from_numpy(stems["vocals"].mean(axis=1)),
                                   atol=1e-6, rtol=0)
    # selection by the plain name in every root; a name missing from one root is refused
    assert [t.name for t in MUSDB18([tmp_path / "one", tmp_path / "two"], "train", exclude=["a"],
                                    sample_rate=44100).tracks] == ["0/b", "1/c"]
    with pytest.raises(ValueError, match="unknown track"):
        MUSDB18([tmp_path / "one", tmp_path / "two"], "train", tracks=["b"], sample_rate=44100)
    with pytest.raises(FileNotFoundError, match="nope"):
        MUSDB18([tmp_path / "one", tmp_path / "nope"], "train", sample_rate=44100)
    with pytest.raises(ValueError, match="empty"):
        MUSDB18([], "train", sample_rate=44100)
    # one root keeps the plain names (older recipes and logs unchanged)
    assert [t.name for t in MUSDB18(tmp_path / "two", "train", sample_rate=44100).tracks] == ["a", "c"]

def test_dsd100_layout(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("001 - x", "002 - y"):
        stems = _stems(rng, 4410)
        for s, x in zip(STEMS, stems):
            _write(tmp_path / "Sources" / "Dev" / name / f"{s}.wav", x, 44100)
        _write(tmp_path / "Mixtures" / "Dev" / name / "mixture.wav", np.sum(stems, axis=0), 44100)
    ds = DSD100(tmp_path, "Dev", targets=GROUPS, sample_rate=44100, segment_seconds=0.05, train=False)
    item = ds[0]
    assert item["name"] == "001 - x" and item["sources"].shape == (2, 2205)
    torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-5, rtol=0)


def test_demo_layout_with_and_without_split(tmp_path):
    rng = np.random.default_rng(2)
    v, a = _stems(rng, 8820, k=2)
    for base in (tmp_path / "train", tmp_path / "flat"):
        _write(base / "t0" / "vocals.wav", v, 44100)
        _write(base / "t0" / "accompaniment.wav", a, 44100)
        _write(base / "t0" / "mixture.wav", v + a, 44100)
    ds = DemoTracks(tmp_path, "train", sample_rate=16000, segment_seconds=0.1)
    flat = DemoTracks(tmp_path / "flat", None, sample_rate=16000, segment_seconds=0.1)
    assert ds.source_names == ["vocals", "accompaniment"] and len(flat) == 1
    item = ds[0]
    assert item["sources"].shape == (2, 1600) and item["mixture"].shape == (1600,)


def test_wsj0mix_layout_segments_and_padding(tmp_path):
    rng = np.random.default_rng(3)
    for name, n in (("u1.wav", 8000), ("u2.wav", 1200)):
        s1 = _write(tmp_path / "tr" / "s1" / name, 0.3 * rng.standard_normal(n), 8000)
        s2 = _write(tmp_path / "tr" / "s2" / name, 0.3 * rng.standard_normal(n), 8000)
        _write(tmp_path / "tr" / "mix" / name, s1 + s2, 8000)
    ds = WSJ0Mix(tmp_path, "tr", sample_rate=8000, segment_seconds=0.25, train=True, seed=0)
    assert ds.source_names == ["s1", "s2"] and len(ds) == 2
    for i in range(2):
        item = ds[i]
        assert item["sources"].shape == (2, 2000)
        # no resampling at 8 kHz: the mixture file equals s1 + s2 exactly
        assert torch.equal(item["mixture"], item["sources"].sum(0))
    short = ds[1]  # 1200-frame utterance: zero-padded to the segment length
    assert torch.count_nonzero(short["sources"][:, 1200:]) == 0
    assert torch.count_nonzero(short["sources"][:, :1200]) > 0


def test_resample_keeps_a_tone():
    t = np.arange(44100) / 44100
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = resample(x, 44100, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    mid = slice(500, -500)  # ignore filter edges
    assert np.max(np.abs(y[mid] - ref[mid])) < 1e-3


def test_train_segments_are_random_seeded_and_epoch_dependent(tmp_path):
    _musdb(tmp_path)
    kw = dict(targets=GROUPS, sample_rate=8000, segment_seconds=0.05, seed=7, segments_per_track=4)
    a = MUSDB18(tmp_path, "train", **kw)
    b = MUSDB18(tmp_path, "train", **kw)
    assert len(a) == 12
    assert all(a[i]["sources"].shape == (2, 400) for i in range(len(a)))
    assert torch.equal(a[5]["mixture"], b[5]["mixture"])  # same seed, same epoch
    first = [a[i]["mixture"] for i in range(len(a))]
    a.set_epoch(1)
    second = [a[i]["mixture"] for i in range(len(a))]
    assert sum(not torch.equal(x, y) for x, y in zip(first, second)) >= 10


def test_validation_is_deterministic_and_ignores_epoch(tmp_path):
    _musdb(tmp_path)
    kw = dict(targets=GROUPS, sample_rate=8000, segment_seconds=0.05, train=False, seed=3,
              segments_per_track=2, gain_db=(-6, 6), remix=0.5, mono="random")
    a, b = MUSDB18(tmp_path, "train", **kw), MUSDB18(tmp_path, "train", **kw)
    b.set_epoch(5)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["mixture"], y["mixture"]) and torch.equal(x["sources"], y["sources"])
    # the two fixed segments of one track differ (offsets drawn from the seed)
    assert not torch.equal(a[0]["mixture"], a[3]["mixture"])
    c = MUSDB18(tmp_path, "train", **{**kw, "seed": 4})
    assert any(not torch.equal(a[i]["mixture"], c[i]["mixture"]) for i in range(len(a)))


def test_gain_remix_and_random_channel_keep_mixture_the_sum(tmp_path):
    stems = _musdb(tmp_path)
    plain = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=44100, segment_seconds=0.05, seed=1)
    aug = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=44100, segment_seconds=0.05, seed=1,
                  gain_db=(-10, 10), remix=1.0, mono="random")
    for i in range(len(aug)):
        item = aug[i]
        torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-6, rtol=0)
    # random channel: the vocals of an unaugmented random-channel item are one channel of the file
    ch = MUSDB18(tmp_path, "train", sources=["vocals"], sample_rate=44100, segment_seconds=0.3,
                 seed=2, mono="random", mixture="sum")
    v = ch[0]["sources"][0].numpy()
    full = stems["a"]["vocals"]
    assert any(np.array_equal(v, full[:, c]) for c in range(2))
    assert not np.allclose(v, full.mean(axis=1))
    assert not torch.equal(plain[0]["sources"], aug[0]["sources"])


def test_remix_alone_keeps_the_mixture_the_sum_of_its_sources(tmp_path):
    # remixing without gains: a source drawn from the item's own track at another offset
    # must not pair with the mixture file read at the item's offset
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        stems = _stems(rng, 2 * 8000)
        for stem, x in zip(STEMS, stems):
            _write(tmp_path / "train" / name / f"{stem}.wav", x, 8000)
        _write(tmp_path / "train" / name / "mixture.wav", np.sum(stems, 0), 8000)
    ds = MUSDB18(tmp_path, "train", sample_rate=8000, segment_seconds=0.25, remix=0.5, seed=0, segments_per_track=10)
    for i in range(len(ds)):
        item = ds[i]
        torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-5, rtol=0)


def test_a_bad_remix_partner_is_excluded_not_the_track_it_was_drawn_for(tmp_path):
    # track c's bass fails only when read (a NaN sample): drawn as a partner, it alone is excluded
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        for k, stem in enumerate(STEMS):
            x = _stems(rng, 8000, k=1)[0]
            if name == "c" and stem == "bass":
                x[::50, 0] = np.nan
            _write(tmp_path / "train" / name / f"{stem}.wav", x, 8000)
    ds = MUSDB18(tmp_path, "train", sample_rate=8000, segment_seconds=0.25, remix=1.0, seed=0, mixture_name=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(10):
            ds.set_epoch(epoch)
            names = [ds[i]["name"] for i in range(len(ds))]
    assert {(ds.tracks[j].name, ds.source_names[k]) for j, k in ds._bad} == {("c", "bass")}
    assert {"a", "b"} <= set(names)


def test_solo_silences_all_but_one_source_at_its_rate(tmp_path):
    _musdb(tmp_path)
    kw = dict(targets=GROUPS, sample_rate=8000, segment_seconds=0.05, seed=5, segments_per_track=40)
    plain = MUSDB18(tmp_path, "train", **kw)
    solo = MUSDB18(tmp_path, "train", solo=0.5, **kw)
    silent, kept = [], set()
    for i in range(len(solo)):
        item, ref = solo[i], plain[i]
        energy = item["sources"].pow(2).sum(-1)
        quiet = energy == 0
        assert quiet.sum() <= len(GROUPS) - 1  # never more than all but one
        silent.append(bool(quiet.any()))
        if quiet.any():
            kept.add(int((~quiet).nonzero()[0]))
        # the source kept is the same segment as without solos; the mixture is the sum
        keep = ~quiet
        torch.testing.assert_close(item["sources"][keep], ref["sources"][keep], atol=1e-6, rtol=0)
        torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-6, rtol=0)
    assert len(silent) == 120  # p = 0.5: 60 +- 5.5 solos; the draws are seeded, the bounds 3.6 sd
    assert 40 <= sum(silent) <= 80
    assert kept == {0, 1}  # either source may be the one kept
    assert not any(bool((plain[i]["sources"].pow(2).sum(-1) == 0).any()) for i in range(len(plain)))
    val = MUSDB18(tmp_path, "train", solo=1.0, train=False, **kw)  # validation: never
    assert not any(bool((val[i]["sources"].pow(2).sum(-1) == 0).any()) for i in range(len(val)))
    with pytest.raises(ValueError, match="solo"):
        MUSDB18(tmp_path, "train", solo=1.5, **kw)


def test_solo_keep_weights_which_source_a_solo_keeps(tmp_path):
    _musdb(tmp_path)
    kw = dict(targets=GROUPS, sample_rate=8000, segment_seconds=0.05, seed=5, segments_per_track=40)
    plain = MUSDB18(tmp_path, "train", **kw)
    solo = MUSDB18(tmp_path, "train", solo=1.0, solo_keep=[1, 3], **kw)  # accompaniment 3 times in 4
    kept = []
    for i in range(len(solo)):
        item = solo[i]
        loud = item["sources"].pow(2).sum(-1) > 0
        assert int(loud.sum()) == 1
        k = int(loud.nonzero()[0])
        kept.append(k)
        torch.testing.assert_close(item["sources"][k], plain[i]["sources"][k], atol=1e-6, rtol=0)
    # 120 solos, p = 0.75: 90 +- 4.7 keep the accompaniment; the bounds are 3.6 sd
    assert 73 <= kept.count(1) <= 107
    only = MUSDB18(tmp_path, "train", solo=1.0, solo_keep=[0, 1], **kw)
    assert all(only[i]["sources"][0].abs().max() == 0 for i in range(20))
    for bad in ([1], [0, 0], [-1, 2], [1, float("nan")]):
        with pytest.raises(ValueError, match="solo_keep"):
            MUSDB18(tmp_path, "train", solo=0.5, solo_keep=bad, **kw)


def test_random_eq_is_a_smooth_bounded_gain_curve():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32)
    y = random_eq(x, np.random.default_rng(7), 6.0, 16000)
    assert y.shape == x.shape and y.dtype == np.float32
    gain_db = 20 * np.log10(np.abs(np.fft.rfft(y.astype(np.float64))) / np.abs(np.fft.rfft(x.astype(np.float64))))
    assert np.all(np.abs(gain_db) <= 6.0 + 1e-6)
    assert np.ptp(gain_db) > 3.0  # not a constant gain
    assert np.max(np.abs(np.diff(gain_db))) < 0.1  # smooth: no step between neighbouring bins
    flat = gain_db[np.fft.rfftfreq(16000, 1 / 16000) <= 60]
    assert np.ptp(flat) < 1e-4  # flat below the lowest control point
    np.testing.assert_array_equal(y, random_eq(x, np.random.default_rng(7), 6.0, 16000))  # seeded


def test_eq_augmentation_changes_each_source_and_sums(tmp_path):
    _musdb(tmp_path)
    kw = dict(targets=GROUPS, sample_rate=8000, segment_seconds=0.25, seed=5, segments_per_track=4)
    plain = MUSDB18(tmp_path, "train", **kw)
    eq = MUSDB18(tmp_path, "train", eq_db=6.0, **kw)
    for i in range(len(eq)):
        a, b = eq[i], plain[i]
        torch.testing.assert_close(a["mixture"], a["sources"].sum(0), atol=1e-5, rtol=0)
        for k in range(len(GROUPS)):
            ratio = a["sources"][k].pow(2).sum() / b["sources"][k].pow(2).sum()
            assert 10 ** -0.6 <= float(ratio) <= 10 ** 0.6  # within +-6 dB of the plain source
            assert not torch.allclose(a["sources"][k], b["sources"][k], atol=1e-4)
    val = MUSDB18(tmp_path, "train", eq_db=6.0, train=False, **kw)  # validation: never
    ref = MUSDB18(tmp_path, "train", train=False, **kw)
    torch.testing.assert_close(val[0]["sources"], ref[0]["sources"])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="eq_db"):
            MUSDB18(tmp_path, "train", eq_db=bad, **kw)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    """The frequency of a tone, to 0.1 Hz (Hann window, zero-padded FFT)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 16 * sr))
    return float(np.argmax(spectrum)) / 16


def test_speed_plays_each_source_at_its_own_speed(tmp_path):
    sr, model_sr = 44100, 8000
    t = np.arange(sr) / sr  # 1 s tracks: a 440 Hz "voice" over a 1000 Hz "accompaniment"
    for name in ("a", "b"):
        tones = {"vocals": 0.5 * np.sin(2 * np.pi * 440 * t), "drums": 0.3 * np.sin(2 * np.pi * 1000 * t)}
        for s in STEMS:
            _write(tmp_path / "train" / name / f"{s}.wav", np.stack([tones.get(s, 0 * t)] * 2, axis=1), sr)
        _write(tmp_path / "train" / name / "mixture.wav", np.stack([sum(tones.values())] * 2, axis=1), sr)
    kw = dict(targets=GROUPS, sample_rate=model_sr, segment_seconds=0.25, seed=3, segments_per_track=30)
    fast = MUSDB18(tmp_path, "train", speed=(0.8, 1.25), **kw)
    ratios = []
    for i in range(len(fast)):
        item = fast[i]
        src = item["sources"].numpy()
        assert src.shape == (2, 2000)
        torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-6, rtol=0)
        r = [_peak_hz(src[0], model_sr) / 440, _peak_hz(src[1], model_sr) / 1000]
        assert all(0.8 * 0.995 <= v <= 1.25 * 1.005 for v in r), r
        # the segment is read whole at its speed: no zero padding at its end
        assert np.abs(src[:, -40:]).max(axis=1).min() > 0.2
        ratios.append(r)
    ratios = np.array(ratios)
    assert ratios.min() < 0.85 and ratios.max() > 1.18  # the range is covered ...
    assert np.ptp(ratios[:, 0] - ratios[:, 1]) > 0.1  # ... and each source has its own speed
    plain = MUSDB18(tmp_path, "train", **kw)
    assert abs(_peak_hz(plain[0]["sources"][0].numpy(), model_sr) - 440) < 1.0
    val = MUSDB18(tmp_path, "train", speed=(0.8, 1.25), train=False, **kw)  # validation: never
    torch.testing.assert_close(val[0]["sources"], MUSDB18(tmp_path, "train", train=False, **kw)[0]["sources"])
    for bad in ([0.9], [1.2, 0.9], [0, 1.1], [0.9, float("inf")]):
        with pytest.raises(ValueError, match="speed"):
            MUSDB18(tmp_path, "train", speed=bad, **kw)


def test_folder_tuple_pairing_varies_by_epoch_and_is_seeded(tmp_path):
    rng = np.random.default_rng(4)
    for src in ("speech", "noise"):
        for k in range(6):
            _write(tmp_path / src / f"{src}{k}.wav", 0.2 * rng.standard_normal(1600 + 100 * k), 16000)
    folders = {"speech": tmp_path / "speech", "noise": [tmp_path / "noise"]}
    a = FolderTuple(folders, sample_rate=8000, segment_seconds=0.05, seed=11)
    b = FolderTuple(folders, sample_rate=8000, segment_seconds=0.05, seed=11)
    c = FolderTuple(folders, sample_rate=8000, segment_seconds=0.05, seed=12)
    assert len(a) == 6 and a.source_names == ["speech", "noise"]
    e0 = [tuple(a.pairing(i)) for i in range(6)]
    assert e0 == [tuple(b.pairing(i)) for i in range(6)]
    assert e0 != [tuple(c.pairing(i)) for i in range(6)]
    # every file is used once per epoch
    assert sorted(p[0] for p in e0) == sorted(str(p) for p in (tmp_path / "speech").glob("*.wav"))
    a.set_epoch(1)
    e1 = [tuple(a.pairing(i)) for i in range(6)]
    assert e1 != e0
    item = a[2]
    assert item["sources"].shape == (2, 400)
    torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-6, rtol=0)
    assert item["name"] == "+".join(Path(p).stem for p in e1[2])
    # validation pairing ignores the epoch
    v = FolderTuple(folders, sample_rate=8000, segment_seconds=0.05, seed=11, train=False)
    p0 = [v.pairing(i) for i in range(6)]
    v.set_epoch(3)
    assert p0 == [v.pairing(i) for i in range(6)]
    assert torch.equal(v[1]["mixture"], FolderTuple(folders, sample_rate=8000, segment_seconds=0.05,
                                                    seed=11, train=False)[1]["mixture"])


# --- bad files ----------------------------------------------------------------------------


def _bad_files(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is not audio at all\n" * 10)
    good = d / "good.wav"
    _write(good, np.zeros(1000), 8000)
    (d / "truncated.wav").write_bytes(good.read_bytes()[:30])
    nan = np.zeros(1000)
    nan[10] = np.nan
    _write(d / "nan.wav", nan, 8000)
    return d


@pytest.mark.parametrize("name,problem", [
    ("missing.wav", "no such file"),
    ("empty.wav", "empty"),
    ("text.wav", "not a readable audio file"),
    ("truncated.wav", "audio"),
    ("nan.wav", "NaN/Inf"),
])
def test_audio_errors_name_the_file_and_problem(tmp_path, name, problem):
    d = _bad_files(tmp_path)
    with pytest.raises(AudioError, match=problem) as info:
        read_audio(d / name)
    assert str(d / name) in str(info.value) and info.value.path == str(d / name)
    err = pickle.loads(pickle.dumps(info.value))
    assert str(err) == str(info.value) and err.path == info.value.path
    assert AudioError(str(info.value)).path is None  # DataLoader rebuilds it from a message
    if name != "nan.wav":
        with pytest.raises(AudioError, match=problem):
            audio_info(d / name)


def test_unreadable_track_skip_or_raise_at_index_time(tmp_path):
    _musdb(tmp_path)
    bad = tmp_path / "train" / "b" / "drums.wav"
    bad.write_bytes(b"RIFF garbage that is not a wave file")
    kw = dict(targets=GROUPS, sample_rate=8000, segment_seconds=0.05)
    with pytest.warns(RuntimeWarning, match=re.escape(str(bad))):
        ds = MUSDB18(tmp_path, "train", **kw)
    assert [t.name for t in ds.tracks] == ["a", "c"]
    with pytest.raises(AudioError, match=re.escape(str(bad))):
        MUSDB18(tmp_path, "train", on_error="raise", **kw)
    (tmp_path / "train" / "c" / "bass.wav").unlink()
    with pytest.raises(AudioError, match="bass.wav: no such file"):
        MUSDB18(tmp_path, "train", on_error="raise", exclude=["b"], **kw)


def _nan_track(root: Path):
    """A track whose header is fine but whose samples hold NaN: fails only when read."""
    x = np.zeros((4410, 2))
    x[::50, 0] = np.nan  # everywhere, so any segment hits one
    _write(root / "train" / "b" / "vocals.wav", x, 44100)
    return root / "train" / "b" / "vocals.wav"


def test_unreadable_track_skip_or_raise_at_read_time(tmp_path):
    _musdb(tmp_path)
    bad = _nan_track(tmp_path)
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.05, seed=0,
                 segments_per_track=2)
    with pytest.warns(RuntimeWarning, match=re.escape(str(bad))):
        item = ds[1]  # track b -> replaced by the next readable one
    assert item["name"] == "c"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered as bad: no second read, no second warning
        assert ds[4]["name"] == "c"
    strict = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.05,
                     on_error="raise")
    with pytest.raises(AudioError, match="NaN/Inf"):
        strict[1]


def test_folder_tuple_skips_bad_files(tmp_path):
    rng = np.random.default_rng(5)
    for src in ("a", "b"):
        for k in range(3):
            _write(tmp_path / src / f"{k}.wav", 0.1 * rng.standard_normal(800), 8000)
    (tmp_path / "a" / "broken.wav").write_text("nope")
    nan = np.zeros(800)
    nan[::50] = np.inf
    _write(tmp_path / "b" / "inf.wav", nan, 8000)
    with pytest.warns(RuntimeWarning, match="broken.wav"):
        ds = FolderTuple({"a": tmp_path / "a", "b": tmp_path / "b"}, sample_rate=8000,
                         segment_seconds=0.05, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert all(torch.isfinite(it["mixture"]).all() for it in items)
    assert any("inf.wav" in str(w.message) for w in caught)
    with pytest.raises(AudioError, match="broken.wav"):
        FolderTuple({"a": tmp_path / "a", "b": tmp_path / "b"}, sample_rate=8000,
                    segment_seconds=0.05, on_error="raise")


# --- DataLoader -----------------------------------------------------------------------------


def test_dataloader_two_workers(tmp_path):
    _musdb(tmp_path)
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.05, seed=3,
                 segments_per_track=2, gain_db=(-3, 3))
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 3
    mix = torch.cat([b["mixture"] for b in batches])
    assert mix.shape == (6, 400) and batches[0]["sources"].shape == (2, 2, 400)
    # same data as in the main process: randomness depends on (seed, epoch, index) only
    expect = torch.stack([ds[i]["mixture"] for i in range(len(ds))])
    assert torch.equal(mix, expect)
    assert batches[0]["name"] == ["a", "b"]
    # picklable (spawn-started workers get a pickled copy)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3]["sources"], ds[3]["sources"])


def test_unseeded_dataset_draws_per_worker_and_follows_torch_seed(tmp_path):
    _musdb(tmp_path, names=("a",))
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.02,
                 segments_per_track=6)

    def run():
        torch.manual_seed(123)
        return [b["mixture"][0] for b in DataLoader(ds, batch_size=1, num_workers=2)]

    first, again = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # workers do not repeat each other's draws (items 0 and 1 come from different workers)
    assert len({tuple(x[:20].tolist()) for x in first}) == 6


def test_dataloader_worker_reports_bad_file_by_path(tmp_path):
    _musdb(tmp_path)
    bad = _nan_track(tmp_path)
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.05,
                 on_error="raise")
    with pytest.raises(AudioError, match=re.escape(str(bad))):
        list(DataLoader(ds, batch_size=1, num_workers=2))
    skip = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.05)
    names = [n for b in DataLoader(skip, batch_size=1, num_workers=2) for n in b["name"]]
    assert names == ["a", "c", "c"]


# --- review: options, names and skips ---------------------------------------------------------


@pytest.mark.parametrize("option,value", [
    ("gain_db", (float("nan"), 0.0)),
    ("gain_db", (0.0, float("inf"))),
    ("gain_db", (1.0,)),
    ("segment_seconds", float("nan")),
    ("segment_seconds", float("inf")),
    ("segment_seconds", 1e-6),  # less than one frame at the model rate
])
def test_a_non_finite_option_is_refused_when_the_data_set_is_made(tmp_path, option, value):
    # accepted, they failed at the first item (in a DataLoader worker: a traceback)
    _musdb(tmp_path)
    kw = {"sample_rate": 8000, "segment_seconds": 0.05, "seed": 0, option: value}
    with pytest.raises(ValueError, match=option):
        MUSDB18(tmp_path, "train", targets=GROUPS, **kw)
    _write(tmp_path / "f" / "x.wav", np.random.default_rng(0).standard_normal(800), 8000)
    with pytest.raises(ValueError, match=option):
        FolderTuple({"x": tmp_path / "f"}, **kw)


@pytest.mark.parametrize("option", ["tracks", "exclude", "sources"])
def test_a_name_list_given_as_one_string_is_refused(tmp_path, option):
    # a string was read as its characters: exclude="b" excluded nothing, silently
    _musdb(tmp_path)
    with pytest.raises(ValueError, match=f"{option} must be a list"):
        MUSDB18(tmp_path, "train", sample_rate=8000, **{option: "b"})
    with pytest.raises(ValueError, match="must be a list"):
        MUSDB18(tmp_path, "train", sample_rate=8000, targets={"vocals": "vocals"})


def test_an_excluded_name_that_is_no_track_is_refused(tmp_path):
    # a misspelt held-out track was trained on, silently (tracks= refuses an unknown name)
    _musdb(tmp_path / "one", names=("a", "b"))
    _musdb(tmp_path / "two", names=("a", "c"))
    with pytest.raises(ValueError, match=r"unknown track\(s\) in exclude: \['B'\]"):
        MUSDB18(tmp_path / "one", "train", sample_rate=8000, exclude=["B"])
    # pooled roots: a name in one of them is a track
    ds = MUSDB18([tmp_path / "one", tmp_path / "two"], "train", sample_rate=8000, exclude=["b", "c"])
    assert [t.name for t in ds.tracks] == ["0/a", "1/a"]


def test_an_item_of_a_bad_track_is_not_a_copy_of_its_neighbour(tmp_path):
    # the replacement read item index+1 with its draws: the epoch held that segment twice
    _musdb(tmp_path)
    _nan_track(tmp_path)
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, segment_seconds=0.05, seed=0,
                 gain_db=(-6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item, neighbour = ds[1], ds[2]
    assert item["name"] == neighbour["name"] == "c"
    assert not torch.equal(item["sources"], neighbour["sources"])


def test_giving_up_says_how_many_tracks_were_tried(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for stem in STEMS:
            x = _stems(rng, 800, k=1)[0]
            x[::50, 0] = np.nan
            _write(tmp_path / "train" / name / f"{stem}.wav", x, 8000)
    ds = MUSDB18(tmp_path, "train", sample_rate=8000, segment_seconds=0.05, seed=0, mixture_name=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AudioError, match="gave up after 2 unreadable tracks near item 0"):
            ds[0]


# --- fuzzing: draws independent of the bad files met before, options refused up front ---------


def _nan_everywhere(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[::50] = np.nan  # any segment hits one: the file fails whenever it is read
    return x


def test_a_remix_partner_does_not_depend_on_the_bad_tracks_met_before(tmp_path):
    # partners were drawn among the tracks not yet known to be bad: an item differed between a
    # fresh data set and one that had met the bad track (so with the number of DataLoader workers)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        for stem in STEMS:
            x = _stems(rng, 4000, channels=1, k=1)[0]
            _write(tmp_path / "train" / name / f"{stem}.wav", _nan_everywhere(x) if name == "b" else x, 8000)
    kw = dict(sample_rate=8000, segment_seconds=0.1, seed=0, remix=1.0, mixture_name=None, segments_per_track=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = [MUSDB18(tmp_path, "train", **kw)[i] for i in range(16)]
        ds = MUSDB18(tmp_path, "train", **kw)
        ds[1]  # track b: found bad
        for i in range(16):
            assert torch.equal(ds[i]["sources"], fresh[i]["sources"]), i


def test_folder_tuple_draws_do_not_depend_on_the_bad_files_met_before(tmp_path):
    # a failed read used up draws that a known bad file (skipped unread) did not
    rng = np.random.default_rng(0)
    for src in ("x", "y"):
        for k in range(3):
            x = 0.1 * rng.standard_normal(4000)
            _write(tmp_path / src / f"{k}.wav", _nan_everywhere(x) if (src, k) == ("x", 0) else x, 8000)
    folders = {"x": tmp_path / "x", "y": tmp_path / "y"}
    kw = dict(sample_rate=8000, segment_seconds=0.1, seed=0, epoch_length=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = [FolderTuple(folders, **kw)[i] for i in range(6)]
        ds = FolderTuple(folders, **kw)
        [ds[i] for i in range(6)]
        for i in range(6):
            assert torch.equal(ds[i]["sources"], fresh[i]["sources"]), i


def test_whole_tracks_sum_the_stems_of_a_group_that_differ_in_length(tmp_path):
    # a group's stems were added as they were: a numpy broadcast error for one frame more
    rng = np.random.default_rng(0)
    for stem, n in zip(STEMS, (800, 800, 801, 800)):
        _write(tmp_path / "train" / "a" / f"{stem}.wav", 0.1 * rng.standard_normal(n), 8000)
    ds = MUSDB18(tmp_path, "train", targets=GROUPS, sample_rate=8000, train=False, mixture_name=None)
    item = ds[0]
    assert item["sources"].shape == (2, 800) and item["mixture"].shape == (800,)
    torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("option,value,match", [
    ("targets", [], "no sources"),
    ("targets", {}, "no sources"),
    ("resample_quality", "best", "resample_quality"),
    ("resample_quality", None, "resample_quality"),
    ("seed", -1, "seed"),
    ("seed", 1.5, "seed"),
    ("gain_db", 3, "gain_db"),
    ("segments_per_track", float("nan"), "segments_per_track"),
])
def test_an_option_that_failed_at_the_first_item_is_refused_up_front(tmp_path, option, value, match):
    # each was accepted, then failed at an item (in a DataLoader worker: a traceback from numpy/soxr)
    _musdb(tmp_path, names=("a",))
    with pytest.raises(ValueError, match=match):
        MUSDB18(tmp_path, "train", sample_rate=8000, segment_seconds=0.05, **{option: value})


def test_wsj0mix_without_speakers_and_folder_tuple_epoch_length_0_are_refused(tmp_path):
    for d in ("mix", "s1", "s2"):
        _write(tmp_path / "tr" / d / "u.wav", 0.1 * np.ones(800), 8000)
    with pytest.raises(ValueError, match="no sources"):
        WSJ0Mix(tmp_path, "tr", n_src=0, sample_rate=8000, segment_seconds=0.05)
    _write(tmp_path / "f" / "x.wav", 0.1 * np.ones(800), 8000)
    with pytest.raises(ValueError, match="epoch_length"):  # 0 was taken for the default, silently
        FolderTuple({"x": tmp_path / "f"}, sample_rate=8000, segment_seconds=0.05, epoch_length=0)


def test_build_dataset_refuses_a_gain_db_that_is_no_pair(tmp_path):
    from chimera.train.data import build_dataset
    from chimera.train.errors import TrainError
    _musdb(tmp_path, names=("a",))
    cfg = {"dataset": "musdb18", "root": str(tmp_path), "segment_seconds": 0.05, "gain_db": 3}
    with pytest.raises(TrainError, match="gain_db"):  # a TypeError traceback from tuple(3)
        build_dataset(cfg, "train", 8000, 0)
    cfg["gain_db"] = [-3, 3]  # TOML's array: still taken
    assert build_dataset(cfg, "train", 8000, 0).gain_db == (-3.0, 3.0)


@pytest.mark.parametrize("remix", [1.0, 0.5])
def test_draws_do_not_depend_on_the_partly_bad_tracks_met_before(tmp_path, remix):
    # track b's bass alone is unreadable: once met, all of b was excluded, so its good stems
    # stopped being remix partners and its items (whose bass came from elsewhere) moved on:
    # an item differed between a fresh data set and one that had met it (so with the workers)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        for stem in STEMS:
            x = _stems(rng, 4000, channels=1, k=1)[0]
            _write(tmp_path / "train" / name / f"{stem}.wav",
                   _nan_everywhere(x) if (name, stem) == ("b", "bass") else x, 8000)
    kw = dict(sample_rate=8000, segment_seconds=0.1, seed=0, remix=remix, mixture_name=None, segments_per_track=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = [MUSDB18(tmp_path, "train", **kw)[i] for i in range(16)]
        ds = MUSDB18(tmp_path, "train", **kw)
        [ds[i] for i in reversed(range(16))]  # every bad stem met, in another order
        for i in range(16):
            assert ds[i]["name"] == fresh[i]["name"], i
            assert torch.equal(ds[i]["sources"], fresh[i]["sources"]), i
    assert "b" in {it["name"] for it in fresh}  # its items that never read its bass keep it
    assert {(ds.tracks[j].name, ds.source_names[k]) for j, k in ds._bad} == {("b", "bass")}


def test_wsj0mix_selects_utterances_by_track_name_as_the_other_data_sets(tmp_path):
    # `tracks` matched the file name ("u1.wav") while Track.name, and every other data set's
    # `tracks`, is the track's name ("u1"); the file name is still taken
    for name in ("u1.wav", "u2.wav", "u3.wav"):
        for d in ("mix", "s1", "s2"):
            _write(tmp_path / "tr" / d / name, 0.1 * np.ones(800), 8000)
    kw = dict(sample_rate=8000, segment_seconds=0.05)

    def names(**selection):
        return [t.name for t in WSJ0Mix(tmp_path, "tr", **selection, **kw).tracks]

    assert names(tracks=["u1", "u3"]) == ["u1", "u3"]
    assert names(tracks=["u2.wav"]) == ["u2"]
    assert names(exclude=["u2"]) == names(exclude=["u2.wav"]) == ["u1", "u3"]
    with pytest.raises(ValueError, match=r"unknown track\(s\): \['u4'\]"):
        WSJ0Mix(tmp_path, "tr", tracks=["u4"], **kw)
    with pytest.raises(ValueError, match=r"unknown track\(s\) in exclude: \['u4'\]"):
        WSJ0Mix(tmp_path, "tr", exclude=["u4"], **kw)


@pytest.mark.parametrize("cls", [MUSDB18, DSD100])
def test_an_empty_sources_list_is_refused_not_the_default(tmp_path, cls):
    # `sources or DEFAULT_SOURCES`: [] trained on the four default stems, silently
    _musdb(tmp_path, names=("a",))
    for s in STEMS:
        _write(tmp_path / "Sources" / "Dev" / "a" / f"{s}.wav", 0.1 * np.ones(800), 8000)
    _write(tmp_path / "Mixtures" / "Dev" / "a" / "mixture.wav", 0.4 * np.ones(800), 8000)
    split = "train" if cls is MUSDB18 else "Dev"
    kw = dict(sample_rate=8000, segment_seconds=0.05)
    with pytest.raises(ValueError, match=r"^sources is an empty list"):
        cls(tmp_path, split, sources=[], **kw)
    with pytest.raises(ValueError, match=r"^sources is an empty list"):  # beside targets too
        cls(tmp_path, split, sources=[], targets=["vocals"], **kw)
    assert cls(tmp_path, split, sources=None, **kw).source_names == list(STEMS)  # None: the default
    assert cls(tmp_path, split, sources=["bass"], **kw).source_names == ["bass"]
