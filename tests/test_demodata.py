"""tools/demodata, the demo-data tool beside the package: signal helpers, held-out splits that
never meet training, sung phrases, one package list, and a tiny build end to end."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from chimera.data import DemoTracks, resample
from tools.demodata import material, packages, singing, speech
from tools.demodata.build import make
from tools.demodata.__main__ import main as demodata_main
from tools.demodata.dsp import bandwidth_extend, formant_frames, formant_warp, quantise_pair, tilt, vibrato
from tools.demodata.external import DataError
from tools.demodata.tracks import HELD_OUT_SPLITS, SONG_SPLITS, Options

ROOT = Path(__file__).resolve().parents[1]
needs_debs = pytest.mark.skipif(bool(packages.missing_packages()),
                                reason="Debian packages for the demo data are not installed")


def _power(x):
    return np.abs(np.fft.rfft(x)) ** 2


def test_bandwidth_extension_adds_a_high_band_at_the_asked_level():
    sr = 44100
    rng = np.random.default_rng(0)
    x = resample(rng.standard_normal(sr).astype(np.float32), 16000, sr)  # nothing above 8 kHz
    f = np.fft.rfftfreq(len(x), 1 / sr)
    hi = f > 9000
    for noise_share in (0.0, 0.6):
        y = bandwidth_extend(x, sr, 8000.0, -25.0, noise_share=noise_share, rng=np.random.default_rng(1))
        px, py = _power(x), _power(y)
        assert py[hi].sum() / py.sum() > 10 * max(px[hi].sum() / px.sum(), 1e-9)
        assert abs(10 * np.log10(_power(y - x).sum() / px.sum()) + 25) < 1.0
        assert _power(y - x)[f < 7500].sum() < 1e-3 * _power(y - x).sum()  # only above the band edge
    assert bandwidth_extend(x, sr, 21000.0, -25.0) is x  # a full-band voice is left alone


def test_tilt_vibrato_and_exact_quantisation():
    sr = 44100
    t = np.arange(sr) / sr
    tones = (np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 4000 * t)).astype(np.float32)
    p = _power(tilt(tones, sr, 3.0))
    f = np.fft.rfftfreq(sr, 1 / sr)
    ratio_db = 10 * np.log10(p[np.argmin(abs(f - 4000))] / p[np.argmin(abs(f - 1000))])
    assert abs(ratio_db - 6.0) < 0.2  # two octaves at +3 dB per octave
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    vib = vibrato(tone, sr, 5.0, 0.5)
    assert vib.shape == tone.shape and not np.allclose(vib, tone, atol=1e-2)
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.45, 0.45, (100, 2)).astype(np.float32)
    b = rng.uniform(-0.45, 0.45, (100, 2)).astype(np.float32)
    qa, qb, qm = quantise_pair(a, b)
    assert qm.dtype == np.int16 and np.array_equal(qm.astype(np.int32), qa.astype(np.int32) + qb)


def _vowel(sr, f0, seconds=2.0):
    """A harmonic tone on ``f0`` through two formants (700 Hz and 2 kHz): a sung vowel."""
    t = np.arange(int(seconds * sr)) / sr
    k = np.arange(1, int(8000 / f0))[:, None]
    amp = np.exp(-((f0 * k - 700) / 150) ** 2) + 0.5 * np.exp(-((f0 * k - 2000) / 300) ** 2) + 1e-3
    return (amp * np.sin(2 * np.pi * f0 * k * t)).sum(axis=0).astype(np.float32)


def _harmonics(x, sr, f0, top=8000.0):
    """Frequencies and powers of the harmonics of ``f0`` below ``top`` in half a second of ``x``."""
    p = _power(x[len(x) // 4: len(x) // 4 + sr // 2])  # bins every 2 Hz: harmonics on bins
    f = np.arange(1, int(top / f0)) * f0
    return f, p[np.round(f / 2).astype(int)], p


def _f1_centroid(f, p):
    band = (f > 300) & (f < 1300)
    return np.sum(f[band] * p[band]) / np.sum(p[band])


@pytest.mark.parametrize("f0", [110.0, 150.0, 220.0])
def test_formant_warp_moves_formants_and_keeps_the_pitch(f0):
    sr = 44100
    x = _vowel(sr, f0)
    n_frames = formant_frames(np.random.default_rng(0), len(x))[0].shape[0]
    same = formant_warp(x, sr, np.ones(n_frames), np.ones(n_frames))
    assert np.max(np.abs(same - x)) < 1e-4 * np.max(np.abs(x))  # no warp: the input back
    f, before, _ = _harmonics(x, sr, f0)
    for factor in (0.8, 1.25):
        y = formant_warp(x, sr, np.full(n_frames, factor), np.full(n_frames, factor))
        _, after, p = _harmonics(y, sr, f0)
        assert after.sum() > 0.99 * p.sum()  # the pitch stays: the harmonics keep the energy
        # The first formant moves with the factor (measured 0.78-0.89 and 1.18-1.29 over f0).
        ratio = _f1_centroid(f, after) / _f1_centroid(f, before)
        assert (ratio < 0.92) if factor < 1 else (ratio > 1.08)
    with pytest.raises(ValueError, match="frames"):
        formant_warp(x, sr, np.ones(n_frames - 1), np.ones(n_frames))


def test_formant_frames_stay_in_their_range_and_glide():
    low, high = formant_frames(np.random.default_rng(3), 44100 * 5, spread=1.25)
    for a in (low, high):
        assert a.min() >= 1 / 1.25 - 1e-9 and a.max() <= 1.25 + 1e-9 and a.max() / a.min() > 1.2
        assert np.max(np.abs(np.diff(np.log(a)))) < 0.1  # glides, no jumps frame to frame


def test_train_kinds_option_is_checked(capsys):
    with pytest.raises(SystemExit):
        demodata_main(["--out", "unused", "--train-kinds", "choir=1"])
    assert "unknown vocal kind 'choir'" in capsys.readouterr().err


def test_training_voices_are_the_allowed_ones_and_test_speakers_are_new():
    allowed_espeak = {"en-us", "en-gb", "en-029", "en-gb-x-rp"}
    allowed_other = {("flite", "kal16"), ("flite", "awb"), ("flite", "slt"),
                     ("festival", "kal_diphone"), ("festival", "cmu_us_slt_arctic_hts")}
    for engine, name in speech.voices_of(held_out=False):
        if engine == "espeak":
            assert name.split("+")[0] in allowed_espeak
        else:
            assert (engine, name) in allowed_other
    assert speech.speaker_of(("flite", "kal16")) == speech.speaker_of(("festival", "kal_diphone"))
    assert speech.speaker_of(("espeak", "en-us+m1")) == speech.speaker_of(("espeak", "en-gb+m1"))
    train = {speech.speaker_of(v) for v in speech.voices_of(held_out=False)}
    assert not train & {speech.speaker_of(v) for v in speech.voices_of(held_out=True)}


def test_hash_split_is_fixed_and_disjoint():
    items = [f"item{i}" for i in range(50)]
    a = material.split_by_hash(items, lambda s: s, 0.2, 0.1)
    b = material.split_by_hash(list(reversed(items)), lambda s: s, 0.2, 0.1)
    assert a == b
    assert sorted(sum(a.values(), [])) == sorted(items)
    assert (len(a["test"]), len(a["valid"])) == (10, 5)


@pytest.mark.parametrize("test, valid", [(0, 0), (0, 0.1), (0.15, 0.12), (0.5, 0.5), (1, 0), (1, 1)])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7])
def test_hash_split_of_few_items_keeps_each_item_once(n, test, valid):
    # a share of 1 left training empty, and "or order" then gave it every item (items in two
    # splits); a share of 0 still took one item
    items = [f"item{i}" for i in range(n)]
    s = material.split_by_hash(items, lambda x: x, test, valid)
    assert sorted(s["test"] + s["valid"] + s["train"]) == items  # each item in one split
    assert bool(s["train"]) == (n > 0)
    for name, share in (("test", test), ("valid", valid)):  # fewer than 3: all for training
        assert bool(s[name]) == (n >= 3 and share > 0)


def test_recorded_speakers():
    assert material.recorded_speaker("audio/taunts/taunt3/haha3.ogg") == "taunt3"
    assert material.recorded_speaker("audio/vtoltalk/v-eloc2.ogg") == "pilot2"
    assert material.recorded_speaker("audio/memressp/power/pcv1.ogg") == "memressp"


def _parse_notes(midi: bytes) -> list[tuple[int, int]]:
    """(channel, note) of every note-on of a format-0 file (running status never used)."""
    assert midi[:4] == b"MThd" and midi[14:18] == b"MTrk"
    data, i, notes = midi[22:], 0, []
    while i < len(data):
        while data[i] & 0x80:  # delta time
            i += 1
        i += 1
        status = data[i]
        if status == 0xFF:
            length = data[i + 2]
            i += 3 + length
            continue
        kind = status & 0xF0
        if kind == 0x90:
            notes.append((status & 0x0F, data[i + 1]))
        i += 2 if kind == 0xC0 else 3
    return notes


def test_sung_phrases_keep_test_presets_and_registers_apart():
    assert not set(singing.PRESETS["train"]) & set(singing.PRESETS["test"])
    assert not set(singing.REGISTERS["train"]) & set(singing.REGISTERS["test"])
    rng = np.random.default_rng(0)
    for split, group in (("train", "train"), ("valid", "train"), ("test", "test")):
        for _ in range(20):
            p = singing.draw_phrase(rng, split)
            assert p["program"] in singing.PRESETS[group]
            lows = [lo for lo, hi in singing.REGISTERS[group] if lo <= p["parts"][0][0] <= hi]
            assert lows and all(min(lows) <= m <= max(hi for _, hi in singing.REGISTERS[group])
                                for m in p["parts"][0])
            notes = _parse_notes(singing.midi_file(singing.phrase_events(p)))
            assert sorted(notes) == sorted((ch, m) for ch, part in enumerate(p["parts"]) for m in part)


def test_one_package_list_read_by_the_makefile():
    printed = subprocess.run([sys.executable, str(ROOT / "tools/demodata/packages.py")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert printed == list(packages.NAMES)
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "-n", "demo-data-debs"], capture_output=True, text=True)
    assert r.returncode == 0 and all(p in r.stdout for p in packages.NAMES)
    mk = (ROOT / "mk/data.mk").read_text()
    assert not any(p in mk for p in ("espeak-ng", "warzone2100-music", "fluid-soundfont-gm"))


def test_the_library_never_imports_the_tool():
    code = ("import sys, chimera, chimera.data, chimera.models, chimera.cli, chimera.train, chimera.separate; "
            "print([m for m in sys.modules if m == 'tools' or m.startswith('tools.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(ROOT)).stdout.strip()
    assert out == "[]"
    for path in (ROOT / "chimera").rglob("*.py"):
        assert "tools.demodata" not in path.read_text() and "synth" not in path.name, path


@needs_debs
def test_recorded_clips_never_cross_splits():
    clips = material.recorded_clips()
    names = {k: {c.name for c in v} for k, v in clips.items()}
    assert not names["train"] & names["test"] and not names["train"] & names["valid"]
    assert not names["valid"] & names["test"]
    for held in material.HELD_OUT_SPEAKERS:
        assert any(c.speaker == held for c in clips["test"])
        assert not any(c.speaker == held for c in clips["train"] + clips["valid"])
    assert all(not n.startswith("audio/sfx/") for v in names.values() for n in v)
    x, sr = material.load_clip(clips["test"][0].name)
    assert x.ndim == 1 and x.size > 0.2 * sr


@needs_debs
def test_recorded_clips_never_cross_splits_by_their_samples():
    # memressp/console/pcv48x.ogg and memressp/missmesg/pcv48x.ogg: one recording, other bytes
    from tools.demodata import build
    seen = {}
    for split, clips in material.recorded_clips().items():
        for c in clips:
            x, sr = material.load_clip(c.name)
            seen.setdefault((sr, x.tobytes()), set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())
    # splits that draw clips are stamped anew: one built with the copies is not taken as current
    for split, spec in SONG_SPLITS.items():
        cfg = build._split_config("song", split, 1, 6.0, Options())
        assert ("held_out_clips" in cfg) == (spec.material != "train" and "recorded" in spec.kinds)


@needs_debs
def test_splits_with_sung_phrases_are_stamped_with_their_render_revision():
    # repeated notes are held since singing.CACHE_VERSION 2: a split built before is out of date
    from tools.demodata import build
    for split, spec in SONG_SPLITS.items():
        cfg = build._split_config("song", split, 1, 6.0, Options())
        assert cfg.get("sung_renders") == (singing.CACHE_VERSION if "sung" in spec.kinds else None)
    speech_only = build._split_config("song", "train", 1, 6.0, Options(train_kinds=(("speech", 1.0),)))
    assert "sung_renders" not in speech_only


def _midi_events(midi: bytes) -> list[tuple[int, int, int]]:
    """(tick, status, first data byte) of every channel message of a format-0 file, in file order."""
    data, i, tick, out = midi[22:], 0, 0, []
    while i < len(data):
        delta = 0
        while True:  # variable-length delta time
            delta = (delta << 7) | (data[i] & 0x7F)
            i += 1
            if not data[i - 1] & 0x80:
                break
        tick += delta
        status = data[i]
        if status == 0xFF:
            i += 3 + data[i + 2]
            continue
        out.append((tick, status, data[i + 1]))
        i += 2 if status & 0xF0 == 0xC0 else 3
    return out


def _sounding_notes(midi: bytes) -> dict[int, list[tuple[int, int, int]]]:
    """(key, on, off) per channel as a synthesiser plays them: a note-on starts a note, a note-off
    ends every sounding note of its key on its channel."""
    notes, sounding = {}, {}
    for tick, status, key in _midi_events(midi):
        ch = status & 0x0F
        if status & 0xF0 == 0x90:
            notes.setdefault(ch, []).append([key, tick, None])
            sounding.setdefault((ch, key), []).append(notes[ch][-1])
        elif status & 0xF0 == 0x80:
            for n in sounding.pop((ch, key), []):
                n[2] = tick
    return {ch: [tuple(n) for n in ns] for ch, ns in notes.items()}


def _phrase(parts, beats, **kw):
    return {"program": 52, "bpm": 90, "beats": beats, "parts": parts, "velocity": 100, "vibrato_hz": 5.0,
            "vibrato_semitones": 0.3, "vibrato_onset_s": 0.2, "reverb": False, "gain": 0.4, **kw}


def test_repeated_pitches_are_held_for_their_whole_length():
    # the legato note-off came 1/16 beat after the next onset: on a repeated pitch (same key and
    # channel) it ended the new note too, after 1/16 beat
    phrases = [_phrase([[60, 60, 62, 62, 62, 64], [57, 57, 59, 55, 55, 60]], [1.0, 0.5, 1.5, 1.0, 2.0, 3.0])]
    rng = np.random.default_rng(3)
    phrases += [singing.draw_phrase(rng, "train" if k % 2 else "test") for k in range(40)]
    for p in phrases:
        notes = _sounding_notes(singing.midi_file(singing.phrase_events(p)))
        starts = np.cumsum([0] + [int(b * singing.TICKS_PER_BEAT) for b in p["beats"]])
        for ch, part in enumerate(p["parts"]):
            assert [n[0] for n in notes[ch]] == part
            for j, (key, on, off) in enumerate(notes[ch]):
                assert on == starts[j] and off - on >= starts[j + 1] - starts[j], (ch, j, part)
                if j + 1 < len(part):  # legato kept between pitches; a repeat ends as the next starts
                    assert off > starts[j + 1] if part[j + 1] != key else off == starts[j + 1]


def test_a_repeated_note_keeps_sounding_when_rendered(tmp_path):
    sf2 = any(f.endswith(".sf2") for f in packages.dpkg_files("fluid-soundfont-gm"))
    if shutil.which("fluidsynth") is None or not sf2:
        pytest.skip("fluidsynth or fluid-soundfont-gm is not installed")
    # at 60 bpm: C4 for 1 s, then C4 again for 2 s (it was cut after 1/16 beat, silent by 1.5 s)
    p = _phrase([[60, 60]], [1.0, 2.0], program=53, bpm=60, vibrato_hz=0.0, vibrato_semitones=0.0)
    x, sr = singing.render_phrase(tmp_path, p)
    frame = sr // 20
    x = x[: len(x) // frame * frame].astype(np.float64)
    env = 10 * np.log10(np.mean(x.reshape(-1, frame) ** 2, axis=1) + 1e-12)  # dB per 50 ms
    assert len(env) >= 58, f"rendered {len(x) / sr:.2f} s, the notes last 3 s"
    first = np.median(env[4:18])  # 0.2-0.9 s: the first note after its attack
    assert env[24:58].min() > first - 15  # 1.2-2.9 s: the second one, still sounding


@needs_debs
@pytest.mark.slow
def test_tiny_build(tmp_path):
    cache = tmp_path / "cache"
    kw = dict(seed=1, train=3, valid=1, test=1, solo=1, seconds=3.0, test_seconds=6.0, cache=cache, quiet=True)
    r = make(tmp_path / "out", speakers=(2, 0, 1), **kw)
    songs = ["train", "valid", *HELD_OUT_SPLITS]
    assert all(r["built"][f"musdb/{s}"] for s in songs) and r["built"]["wsj0-2mix/tt"]
    musdb = tmp_path / "out" / "musdb"
    meta = {s: json.loads((musdb / s / "metadata.json").read_text()) for s in songs}
    train_music = {Path(m.path).name for m in material.music_files()["train"]}
    train_clips = {c.name for c in material.recorded_clips()["train"]}
    train_voices = {v for _, v in speech.voices_of(held_out=False)}
    for split in songs:
        spec = SONG_SPLITS[split]
        for m in meta[split]:
            d = musdb / split / m["name"]
            mix, sr = sf.read(str(d / "mixture.wav"), dtype="float32")
            v, _ = sf.read(str(d / "vocals.wav"), dtype="float32")
            a, _ = sf.read(str(d / "accompaniment.wav"), dtype="float32")
            seconds = kw["seconds"] if split == "train" else kw["test_seconds"]
            assert sr == 44100 and mix.shape == (round(seconds * 44100), 2)
            assert np.array_equal(mix, v + a)
            if m["solo"] == "instrumental":
                assert not v.any() and a.any()
            elif m["solo"] == "acappella":
                assert not a.any() and v.any()
            else:
                level = 20 * np.log10(np.sqrt(np.mean(v.astype(np.float64) ** 2))
                                      / np.sqrt(np.mean(a.astype(np.float64) ** 2)))
                assert abs(level - m["vocals_to_accompaniment_db"]) < 0.05 and abs(level) <= 5.01
            if spec.material == "test":
                assert m["music"] not in train_music
                for u in m.get("utterances", []):
                    assert u.get("voice") not in train_voices and u.get("clip") not in train_clips
                    assert u.get("program", singing.PRESETS["test"][0]) in singing.PRESETS["test"]
    kinds = {u["kind"] for s in ("test-synthetic", "test-real", "test-sung") for m in meta[s] for u in m["utterances"]}
    assert kinds == {"speech", "recorded", "sung"}
    lic = (tmp_path / "out" / "LICENSES.md").read_text()
    assert all(p in lic for p in packages.NAMES) and "GPL" in lic
    # rerun: nothing rebuilt; the same seed elsewhere (warm cache): identical files
    assert not any(make(tmp_path / "out", speakers=(2, 0, 1), **kw)["built"].values())
    make(tmp_path / "twin", speakers=(0, 0, 0), **{**kw, "valid": 0, "test": 0, "solo": 0})
    name = "train/train-000/mixture.wav"
    assert (tmp_path / "twin" / "musdb" / name).read_bytes() == (musdb / name).read_bytes()
    # Later options: the defaults leave them out of the stamps (older data stays up to date);
    # formants and kinds apply to the train split only.
    stamp = json.loads((musdb / "train" / ".complete.json").read_text())
    assert "formant_share" not in stamp["options"] and "train_kinds" not in stamp["options"]
    make(tmp_path / "formants", speakers=(0, 0, 0), formant_share=1.0, train_kinds=(("sung", 1.0),),
         **{**kw, "test": 0, "solo": 0})
    later = {s: json.loads((tmp_path / "formants" / "musdb" / s / "metadata.json").read_text())
             for s in ("train", "valid")}
    train_pieces = [u for m in later["train"] for u in m["utterances"]]
    assert train_pieces and all(u["kind"] == "sung" and "formant_low" in u for u in train_pieces)
    assert all("formant_low" not in u for m in later["valid"] for u in m["utterances"])
    assert later["valid"] == meta["valid"]
    ds = DemoTracks(musdb, "test-real", sample_rate=44100, segment_seconds=1.0, seed=0)
    assert ds[0]["sources"].shape == (2, 44100)


def test_copies_of_training_material_are_dropped_from_held_out_splits():
    splits = {"train": ["a", "B"], "valid": ["b", "c", "C"], "test": ["A", "c2", "d"]}
    out = material.drop_cross_split_duplicates(splits, lambda s: s[0].lower())
    assert out == {"train": ["a", "B"], "valid": ["c", "C"], "test": ["d"]}


def test_texts_inside_or_around_an_earlier_splits_text_are_dropped():
    # "Brooke's Law: Whenever ..." in training and "Whenever ..." in test: the same words read
    # by other voices, which the equality check let through
    splits = {"train": ["Brooke's Law: Whenever a system becomes defined, a fool breaks it.", "Short one."],
              "valid": ["Whenever a system becomes defined -- a fool breaks it!", "Short one, said he.",
                        "A valid text of its own.", "Its own words"],
              "test": ["A VALID text of its own", "Its own words, and more", "A test text of its own."]}
    out = material.drop_contained_texts(splits, material._text_fingerprint)
    assert out["train"] == splits["train"]  # training loses nothing
    assert out["valid"] == ["A valid text of its own.", "Its own words"]
    # valid splits off test too: a test text equal to, or around, a valid text is dropped
    assert out["test"] == ["A test text of its own."]
    assert material.drop_contained_texts({"train": ["Same."], "valid": [], "test": ["sAME!"]},
                                         material._text_fingerprint)["test"] == []


def test_music_sharing_long_stretches_counts_as_one_recording(tmp_path):
    # track7 repeats track9 for 102 s and shallow-green is built on call_of_the_winding_path's
    # loops: other bytes, so the byte check let them into test
    def mf(pkg, name):
        return material.MusicFile(f"/usr/share/games/x/music/{name}", pkg)
    for first, second in material.SAME_MUSIC:
        assert material._music_print(mf(*first)) == material._music_print(mf(*second))
    other = tmp_path / "other.ogg"
    other.write_bytes(b"OggS other")
    splits = {"train": [mf("warzone2100-music", "track9.opus")],
              "valid": [material.MusicFile(str(other), "warzone2100-music")],  # by its bytes
              "test": [mf("warzone2100-music", "track7.opus"), mf("supertux-data", "shallow-green.ogg")]}
    out = material.drop_cross_split_duplicates(splits, material._music_print)
    assert out == {"train": splits["train"], "valid": splits["valid"], "test": [splits["test"][1]]}


@needs_debs
def test_music_and_texts_never_cross_splits_by_content():
    import hashlib
    import re

    def crossing(splits, fingerprint):
        seen = {k: {fingerprint(x) for x in v} for k, v in splits.items()}
        return (seen["train"] & seen["valid"]) | (seen["train"] & seen["test"]) | (seen["valid"] & seen["test"])

    music = material.music_files()
    assert not crossing(music, lambda m: hashlib.sha1(Path(m.path).read_bytes()).hexdigest())
    texts = material.fortune_texts()
    assert not crossing(texts, lambda t: re.sub(r"[^a-z]", "", t.lower()))
    assert len(texts["valid"]) > 500 and len(texts["test"]) > 500
    # nor inside (or around) a text of an earlier split: 49 valid and test texts were
    letters = {k: [re.sub(r"[^a-z]", "", t.lower()) for t in v] for k, v in texts.items()}
    for held, earlier in (("valid", letters["train"]), ("test", letters["train"] + letters["valid"])):
        joined = "\0".join(earlier)
        assert not [t for t in letters[held] if t in joined]
        joined = "\0".join(letters[held])
        assert not [t for t in earlier if t in joined]
    # music repeating long stretches of a training file stays in training only
    names = {k: {(m.package, os.path.basename(m.path)) for m in v} for k, v in music.items()}
    for first, second in material.SAME_MUSIC:
        assert first in names["train"] and not {first, second} & (names["valid"] | names["test"])
    # splits from held-out material are stamped anew: ones built with those texts and music are out of date
    from tools.demodata import build
    assert build.HELD_OUT_MATERIAL >= 3
    for split, spec in SONG_SPLITS.items():
        cfg = build._split_config("song", split, 1, 6.0, Options())
        assert cfg.get("held_out_material") == (build.HELD_OUT_MATERIAL if spec.material != "train" else None)


@needs_debs
def test_every_voice_is_installed(monkeypatch):
    import re
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
    installed = set(re.findall(r"!v/(\S+)", listing))
    used = {name.partition("+")[2] for engine, name in speech.VOICES["train"] + speech.VOICES["test"]
            if engine == "espeak"}
    assert used <= installed  # an unknown variant is spoken silently by the default voice
    speech.check_voices()
    monkeypatch.setitem(speech.VOICES, "test", speech.VOICES["test"] + [("espeak", "en-us+Nobody"), ("flite", "xyz")])
    with pytest.raises(speech.DataError, match=r"espeak-ng en-us\+Nobody, flite xyz"):
        speech.check_voices()


def _fake_job(args):
    kind, split, index, opts, out_dir, *_ = args
    (Path(out_dir) / split).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / split / f"{index}.txt").write_text(str(opts.seed))
    return {"index": index}


def test_split_folders_are_replaced_only_when_ours_and_forced(tmp_path, monkeypatch):
    from tools.demodata import build
    from tools.demodata.external import DataError
    from tools.demodata.tracks import Options

    monkeypatch.setattr(build, "_job", _fake_job)

    def run(config, force=False, seed=0):
        extra = {"force": True} if force else {}
        return build._build_split("song", "train", 2, 1.0, Options(seed=seed), tmp_path, tmp_path / "c", 1,
                                  config, lambda *a: None, **extra)

    mine = tmp_path / "train" / "mine.wav"  # someone's own data under the same name
    mine.parent.mkdir()
    mine.write_bytes(b"RIFF")
    with pytest.raises(DataError, match="not made by this tool"):
        run({"a": 1})
    assert mine.read_bytes() == b"RIFF"
    mine.unlink()
    assert run({"a": 1}) and not run({"a": 1})
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [".complete.json", "0.txt", "1.txt",
                                                                      "metadata.json"]
    with pytest.raises(DataError, match="--force"):  # other options: hours of tracks kept
        run({"a": 2}, seed=5)
    assert (tmp_path / "train" / "0.txt").read_text() == "0"
    assert run({"a": 2}, force=True, seed=5) and (tmp_path / "train" / "0.txt").read_text() == "5"
    # a build cut short (marker, no stamp) is ours: rebuilt without --force
    (tmp_path / "train" / ".complete.json").unlink()
    (tmp_path / "train" / build.BUILDING).write_text("")
    assert run({"a": 2}, seed=7) and (tmp_path / "train" / "0.txt").read_text() == "7"
    assert not (tmp_path / "train" / build.BUILDING).exists()


@needs_debs
def test_tracks_too_short_for_a_voice_are_refused(tmp_path, capsys):
    from tools.demodata.external import DataError
    with pytest.raises(DataError, match="seconds: expected a finite number at least 2"):
        make(tmp_path / "out", train=1, valid=0, test=0, solo=0, seconds=1.5, speakers=(0, 0, 0),
             cache=tmp_path / "cache", quiet=True)
    assert not (tmp_path / "out").exists()
    # a silent a cappella track was scaled by 0.9 / 0 and written as zeros: NaN is refused
    with pytest.raises(ValueError, match="NaN"):
        quantise_pair(np.full((4, 2), np.nan, np.float32), np.zeros((4, 2), np.float32))


def test_train_kinds_weights_must_be_finite():
    import argparse
    from tools.demodata.__main__ import _kinds
    with pytest.raises(argparse.ArgumentTypeError, match="non-negative numbers"):
        _kinds("sung=inf,speech=1")
    assert _kinds("sung=0.5,speech=0.25") == (("speech", 0.25), ("sung", 0.5))


def test_licences_name_every_package_even_without_its_copyright_file(tmp_path):
    from tools.demodata import build
    docs = tmp_path / "doc"
    (docs / "flite").mkdir(parents=True)
    (docs / "flite" / "copyright").write_text("Flite copyright text")
    text = build.write_licences(tmp_path, docs).read_text()
    assert "Flite copyright text" in text
    for p in packages.PACKAGES:  # a missing copyright file is said, its notice not dropped
        assert f"## {p.name}\n" in text
    assert "megaglest-data/copyright` was missing" in text and "CC-BY-SA-3.0" in text


@needs_debs
def test_an_out_path_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert demodata_main(["--out", str(f), "--train", "1", "--valid", "0", "--test", "0", "--solo", "0",
                          "--speakers", "0", "0", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(f) in err and err.count("\n") == 1
    assert f.read_text() == "x"


def test_texts_come_from_the_listed_fortune_packages_only(tmp_path, monkeypatch):
    # another fortune package's file in the same folder added its texts to training
    quotes = [f"Quotation number {w} says something worth reading aloud." for w in "abcdefghijkl"]
    (tmp_path / "listed").write_text("\n%\n".join(quotes))
    (tmp_path / "other").write_text("A quotation from a package nobody listed for training.")
    monkeypatch.setattr(material, "FORTUNE_DIR", tmp_path)
    monkeypatch.setattr(material, "dpkg_files", lambda pkg: [str(tmp_path / "listed")] if pkg == "fortunes" else [])
    material.fortune_texts.cache_clear()
    try:
        texts = sum(material.fortune_texts().values(), [])
    finally:
        material.fortune_texts.cache_clear()
    assert sorted(texts) == sorted(quotes)


@pytest.mark.parametrize("option, value, allowed", [
    ("--seconds", "inf", "at least 2"), ("--test-seconds", "inf", "at least 2"), ("--seconds", "1", "at least 2"),
    ("--lowpass-share", "nan", "from 0 to 1"), ("--bwe-share", "nan", "from 0 to 1"),
    ("--sung-share", "nan", "from 0 to 1"), ("--formant-share", "nan", "from 0 to 1"),
    ("--formant-share", "1.5", "from 0 to 1"), ("--seed", "-1", "at least 0"), ("--jobs", "0", "at least 1"),
    ("--train", "-1", "at least 0"), ("--speakers", "-1", "at least 0"),
])
def test_numeric_options_are_checked_when_parsed(tmp_path, capsys, option, value, allowed):
    # inf ended in an OverflowError traceback, NaN in a split stamp that never matched again
    out = tmp_path / "out"
    args = ["--out", str(out), "--train", "0", "--valid", "0", "--test", "0", "--solo", "0", "--quiet",
            "--speakers", "0", "0", "0"]
    args += [option, value] + (["0", "0"] if option == "--speakers" else [])
    with pytest.raises(SystemExit) as exc:
        demodata_main(args)
    assert exc.value.code == 2 and not out.exists()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}: " in line and allowed in line and repr(value) in line


def test_numeric_options_at_their_limits_are_taken(tmp_path, monkeypatch):
    from tools.demodata import __main__ as cli
    seen = {}
    monkeypatch.setattr(cli, "make", lambda out, **kw: seen.update(kw) or {"out": out, "built": {}, "seconds": 0})
    assert cli.main(["--out", str(tmp_path), "--seconds", "2", "--test-seconds", "2.5", "--lowpass-share", "0",
                     "--bwe-share", "1", "--formant-share", "1", "--seed", "0", "--jobs", "1", "--train", "0",
                     "--speakers", "0", "0", "0", "--quiet"]) == 0
    assert (seen["seconds"], seen["test_seconds"], seen["lowpass_share"], seen["bwe_share"]) == (2.0, 2.5, 0.0, 1.0)
    assert (seen["formant_share"], seen["jobs"], seen["train"], seen["speakers"]) == (1.0, 1, 0, (0, 0, 0))


@pytest.mark.parametrize("name, value", [
    ("seed", -1), ("seed", True), ("seed", 1.5), ("seed", "3"), ("train", -1), ("train", 2.0), ("train", True),
    ("valid", None), ("test", float("nan")), ("solo", -2), ("jobs", 0), ("jobs", False), ("speakers", (1, 2)),
    ("speakers", (1, -1, 0)), ("speakers", (1, True, 0)), ("speakers", 5), ("seconds", float("nan")),
    ("test_seconds", float("inf")), ("seconds", 1.5), ("lowpass_share", 1.5), ("formant_share", float("nan")),
    ("sung_share", -0.1), ("bwe_share", True), ("second_voice_share", 2.0), ("train_kinds", (("choir", 1.0),)),
    ("train_kinds", (("sung", float("inf")),)), ("train_kinds", (("sung", 0.0),)), ("train_kinds", "sung=1"),
])
def test_make_checks_its_numbers_before_any_work(tmp_path, monkeypatch, name, value):
    # only the command line checked them: make() called from Python went on to build (a negative
    # count, a float, True for 1, NaN) and failed, if at all, mid-way with a traceback
    from tools.demodata import build

    def work():
        raise AssertionError(f"{name}={value!r} got past the checks")

    monkeypatch.setattr(build, "missing_tools", work)
    kw = dict(train=0, valid=0, test=0, solo=0, speakers=(0, 0, 0), quiet=True, cache=tmp_path / "cache")
    with pytest.raises(DataError) as exc:
        make(tmp_path / "out", **{**kw, name: value})
    assert str(exc.value).startswith(f"{name}: ") and "\n" not in str(exc.value)
    assert not any(tmp_path.iterdir())


def test_make_takes_numbers_at_their_limits_as_plain_ones(tmp_path, monkeypatch):
    from tools.demodata import build
    calls = []

    def split(kind, split, count, seconds, opts, out_dir, cache, jobs, config, *rest):
        json.dumps(config)  # numpy numbers would not go into the stamp
        calls.append((split, count, seconds, opts, jobs))
        return False

    monkeypatch.setattr(build, "missing_tools", lambda: [])
    monkeypatch.setattr(build, "missing_packages", lambda: [])
    monkeypatch.setattr(speech, "check_voices", lambda: None)
    monkeypatch.setattr(build, "write_licences", lambda out: None)
    monkeypatch.setattr(build, "_build_split", split)
    make(tmp_path / "out", seed=np.int64(0), train=np.int64(0), valid=0, test=1, solo=0, seconds=2,
         test_seconds=np.float32(2.5), speakers=[0, np.int32(2), 0], jobs=1, quiet=True, lowpass_share=0,
         bwe_share=1, sung_share=np.float64(0.5), formant_share=1.0, train_kinds=(("sung", 1), ("speech", 0)))
    counts = {sp: (c, sec) for sp, c, sec, _, _ in calls}
    assert counts["train"] == (0, 2.0) and counts["test-real"] == (1, 2.5) and counts["tt"] == (0, 0.0)
    assert counts["cv"][0] == 2 and type(counts["cv"][0]) is int and type(counts["train"][1]) is float
    opts = calls[0][3]
    assert (opts.seed, opts.lowpass_share, opts.bwe_share, opts.formant_share) == (0, 0.0, 1.0, 1.0)
    assert type(opts.seed) is int and opts.train_kinds == (("sung", 1.0), ("speech", 0.0)) and calls[0][4] == 1


def test_no_dpkg_is_one_line_saying_a_debian_system_is_needed(tmp_path, monkeypatch, capsys):
    args = ["--out", str(tmp_path / "out"), "--train", "1", "--valid", "0", "--test", "0", "--solo", "0",
            "--speakers", "0", "0", "0", "--quiet"]
    dpkg = shutil.which("dpkg")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither dpkg nor dpkg-query
    assert packages.missing_packages() == list(packages.NAMES)  # not a FileNotFoundError: the tests skip
    assert demodata_main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: dpkg and dpkg-query not found") and "Debian-based system" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    if dpkg:  # dpkg without dpkg-query (read for the licence notes)
        os.symlink(dpkg, tmp_path / "dpkg")
        assert demodata_main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: dpkg-query not found") and "Debian-based system" in err


def _fail_after_first_split(args):
    if args[1] != "valid":
        raise DataError(f"cut short in {args[1]}")
    return _fake_job(args)


def test_licences_are_written_with_the_first_finished_split(tmp_path, monkeypatch):
    from tools.demodata import build
    monkeypatch.setattr(build, "_job", _fail_after_first_split)
    monkeypatch.setattr(build, "missing_tools", lambda: [], raising=False)
    monkeypatch.setattr(build, "missing_packages", lambda: [])
    monkeypatch.setattr(speech, "check_voices", lambda: None)
    monkeypatch.setattr(build, "package_version", lambda name: "1.0-test")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="cut short in test-synthetic"):
        make(out, train=1, valid=1, test=1, solo=0, speakers=(0, 0, 0), seconds=3.0, test_seconds=6.0,
             cache=tmp_path / "cache", quiet=True, jobs=1)
    assert (out / "musdb" / "valid" / build.STAMP).exists()
    expected = build.write_licences(tmp_path).read_text()
    assert "| espeak-ng | 1.0-test |" in expected
    assert (out / "LICENSES.md").read_text() == expected
    # replaced, not rewritten in place: a reader never sees half a file, and no temp file stays
    inode = (out / "LICENSES.md").stat().st_ino
    build.write_licences(out)
    assert (out / "LICENSES.md").stat().st_ino != inode and (out / "LICENSES.md").read_text() == expected
    assert sorted(p.name for p in out.iterdir()) == ["LICENSES.md", "musdb"]


@needs_debs
def test_music_decoded_by_ffmpeg_stays_inside_the_given_cache(tmp_path, monkeypatch):
    from tools.demodata import tracks
    song = tmp_path / "song.ogg"
    song.write_bytes(b"not a file soundfile reads")
    rng = np.random.default_rng(0)
    tone = 0.1 * rng.standard_normal((44100 * 8, 2)).astype(np.float32)

    def ffmpeg(cmd, what):  # writes what ffmpeg would decode, to the file it was asked for
        assert cmd[0] == "ffmpeg" and str(song) in cmd
        sf.write(cmd[-1], tone, 44100, subtype="PCM_16")
        return ""

    monkeypatch.setattr(tracks, "run", ffmpeg)
    files = [material.MusicFile(str(song), "test-music")]
    monkeypatch.setattr(material, "music_files", lambda: {"train": files, "valid": files, "test": files})
    kw = dict(train=1, valid=0, test=0, solo=0, speakers=(0, 0, 0), seconds=3.0, quiet=True, jobs=1)
    make(tmp_path / "out", cache=tmp_path / "mine", **kw)
    assert len(list((tmp_path / "mine" / "music").glob("*.wav"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out", "song.ogg"]  # nothing beside it
    assert not (tmp_path / "out" / ".cache").exists()
    # the default layout stays: utterances and music side by side in OUT/.cache
    make(tmp_path / "default", **kw)
    assert sorted(p.name for p in (tmp_path / "default" / ".cache").iterdir()) == ["music", "utterances"]
    assert len(list((tmp_path / "default" / ".cache" / "music").glob("*.wav"))) == 1
