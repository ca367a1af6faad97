"""Demo data from locally installable Debian packages: real music plus synthetic voices.

    python -m chimera.data.synth --out demo-data --seed 0 --train 480 --valid 8 --test 8 --seconds 20

Writes
  ``OUT/musdb/{train,valid,test}/<track>/{mixture,vocals,accompaniment}.wav`` (44.1 kHz stereo,
  PCM_16, mixture = vocals + accompaniment sample for sample: the mixture is the integer sum of
  the quantised stems), ``OUT/musdb/<split>/metadata.json`` (voice, music file, offset, level,
  filters per track),
  ``OUT/wsj0-2mix/{tr,cv,tt}/{mix,s1,s2}/*.wav`` (8 kHz mono, "min" lengths), and
  ``OUT/LICENSES.md`` (the packages used and their licences).

Material
  Accompaniment: ``warzone2100-music`` (Opus, 48 kHz) and ``wesnoth-1.16-music`` (Vorbis,
  44.1 kHz). Music files are split between train/valid/test by a fixed hash of their names
  (independent of the seed), so held-out music never appears in training, whatever the seed.
  Vocals: ``espeak-ng`` (accent x variant, pitch, speed), ``flite`` (kal16, awb, slt; rms held
  out) and ``festival`` (kal diphone, slt HTS), reading texts from ``fortunes``; sung-like
  material from festival's singing mode (kal diphone, random melodies on a pentatonic scale)
  and from espeak-ng SSML (one note per word, flat intonation) with vibrato added by a
  modulated delay. The test split uses voices that appear nowhere in train/valid (other
  espeak accents and variants, flite rms) and texts of its own.

Band-limit choice (documented for the model card)
  flite and festival voices are 16 kHz recordings with nothing above 8 kHz, while the music
  is full band. Two things keep "energy above 8 kHz" from being a free accompaniment cue:
  (1) a random ``--lowpass-share`` (default 35 %) of tracks get their accompaniment low-passed
  at a random cut-off in 6-11 kHz; (2) a random ``--bwe-share`` (default 50 %) of band-limited
  utterances get synthetic high band (harmonics of a memoryless non-linearity, high-passed above
  the voice's Nyquist, 20-32 dB below the utterance), so vocals sometimes do carry energy up
  high, co-modulated with the speech as real sibilants and breath are.

Music is decoded with soundfile (libsndfile >= 1.0.29 reads Opus and Vorbis), falling back to
``ffmpeg`` when the local libsndfile cannot. Synthesised utterances are cached
(``OUT/.cache/utterances``), and a split whose options have
not changed is skipped, so a rerun takes seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import read_audio, resample, write_audio

MUSIC_RATE = 44100
SPEAKER_RATE = 8000
CACHE_VERSION = 2

MUSIC_PACKAGES = {"warzone2100-music": (".opus", ".ogg"), "wesnoth-1.16-music": (".ogg", ".opus")}
VOICE_PACKAGES = ["espeak-ng", "flite", "festival", "festvox-kallpc16k", "festvox-us-slt-hts",
                  "festlex-cmu", "festlex-poslex"]
TEXT_PACKAGES = ["fortunes-min", "fortunes"]
DEBIAN_PACKAGES = list(MUSIC_PACKAGES) + VOICE_PACKAGES + TEXT_PACKAGES
FORTUNE_DIR = Path("/usr/share/games/fortunes")

SPLIT_ID = {"train": 1, "valid": 2, "test": 3}
WSJ_SPLITS = {"tr": "train", "cv": "valid", "tt": "test"}

# Voices: (engine, name). Train and valid share the "train" voices; test has its own.
# Many espeak-ng variants (timbre presets) in training: with few, a model learns the voices
# rather than "voice" and does not carry over to the held-out ones.
ESPEAK_TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m8", "f1", "f2", "f3", "Andy", "Annie", "Michael", "Alex", "Alicia",
    "Andrea", "AnxiousAndy", "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco",
    "Mario", "Mike", "Nguyen", "Storm", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty",
    "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "grandma",
    "grandpa", "gustave", "iven", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "marcelo",
    "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "sandro", "shelby", "steph", "travis", "victor", "zac")
ESPEAK_TRAIN = [(a, v) for a in ("en-us", "en-gb", "en-029", "en-gb-x-rp") for v in ESPEAK_TRAIN_VARIANTS]
ESPEAK_TEST = [(a, v) for a in ("en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
               for v in ("m5", "m6", "m7", "f4", "f5", "Linda")]
VOICES = {
    "train": [("espeak", f"{a}+{v}") for a, v in ESPEAK_TRAIN]
    + [("flite", "kal16"), ("flite", "awb"), ("flite", "slt")]
    + [("festival", "kal_diphone"), ("festival", "cmu_us_slt_arctic_hts")],
    "test": [("espeak", f"{a}+{v}") for a, v in ESPEAK_TEST] + [("flite", "rms")],
}


def split_voices(split: str) -> list[tuple[str, str]]:
    """The voices a split may use: held-out ones for the test split (``test`` or wsj0-2mix's
    ``tt``), the training voices otherwise."""
    return VOICES["test" if WSJ_SPLITS.get(split, split) == "test" else "train"]


# Engines get drawn evenly (not in proportion to how many voices each has).
ENGINE_WEIGHTS = {"espeak": 0.45, "flite": 0.3, "festival": 0.25}


class SynthError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# material discovery


def _dpkg_files(pkg: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.splitlines()


def missing_packages(packages=DEBIAN_PACKAGES) -> list[str]:
    missing = []
    for p in packages:
        r = subprocess.run(["dpkg", "-s", p], capture_output=True, text=True)
        if r.returncode != 0 or "Status: install ok installed" not in r.stdout:
            missing.append(p)
    return missing


def _stable_unit(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def _split_by_hash(items: list[str], key, test: float, valid: float) -> dict[str, list[str]]:
    """Fixed, seed-independent split: sort by a hash, take the first shares for test/valid."""
    order = sorted(items, key=lambda s: _stable_unit(key(s)))
    n_test = max(1, round(test * len(order))) if len(order) >= 3 else 0
    n_valid = max(1, round(valid * len(order))) if len(order) >= 3 else 0
    return {"test": order[:n_test], "valid": order[n_test:n_test + n_valid],
            "train": order[n_test + n_valid:] or order}


@lru_cache(maxsize=1)
def music_files() -> dict[str, list[str]]:
    """Music files per split (each package split separately so every split has both)."""
    splits = {"train": [], "valid": [], "test": []}
    for pkg, exts in MUSIC_PACKAGES.items():
        files = sorted(f for f in _dpkg_files(pkg) if f.lower().endswith(exts) and os.path.isfile(f))
        if not files:
            continue
        for k, v in _split_by_hash(files, lambda f: "music:" + os.path.basename(f), 0.15, 0.12).items():
            splits[k].extend(v)
    if not splits["train"]:
        raise SynthError("no music found: install the Debian packages "
                         + " ".join(MUSIC_PACKAGES) + " (make demo-data does)")
    return splits


def _clean_fortune(text: str) -> str | None:
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    t = " ".join(" ".join(lines).split())
    if not 30 <= len(t) <= 220:
        return None
    if any(c in t for c in "|\\/_<>{}[]=#@^~*"):  # art, code, markup
        return None
    letters = sum(c.isalpha() for c in t)
    if letters < 0.7 * len(t) - t.count(" ") or not t.isascii():
        return None
    return t


@lru_cache(maxsize=1)
def fortune_texts() -> dict[str, list[str]]:
    files = [p for p in sorted(FORTUNE_DIR.glob("*"))
             if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")]
    texts = set()
    for p in files:
        try:
            raw = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for chunk in re.split(r"^%\s*$", raw, flags=re.M):
            t = _clean_fortune(chunk)
            if t:
                texts.add(t)
    if len(texts) < 10:
        raise SynthError(f"too few usable texts in {FORTUNE_DIR}: install fortunes-min/fortunes")
    return _split_by_hash(sorted(texts), lambda t: "text:" + t, 0.15, 0.1)


# ---------------------------------------------------------------------------------------------
# speech synthesis (cached)


def _run(cmd: list[str], what: str) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise SynthError(f"{cmd[0]} not found: install it (make demo-data does)") from exc
    except subprocess.TimeoutExpired as exc:
        raise SynthError(f"{what}: timed out") from exc
    if r.returncode != 0:
        raise SynthError(f"{what}: {cmd[0]} failed ({r.returncode}): {r.stderr.strip()[:300]}")


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?", text)


def _syllables(word: str) -> int:
    w = word.lower()
    return max(1, len(re.findall(r"[aeiouy]+", w)) - (w.endswith("e") and len(w) > 3))


PENTATONIC = (0, 2, 4, 7, 9)
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _melody(rng: np.random.Generator, n: int, base_midi: int) -> list[int]:
    """A random walk on a pentatonic scale (sounds more like a tune than independent draws)."""
    scale = [base_midi + 12 * o + s for o in (-1, 0, 1) for s in PENTATONIC]
    pos = len(scale) // 2
    out = []
    for _ in range(n):
        pos = int(np.clip(pos + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 2, len(scale) - 3))
        out.append(scale[pos])
    return out


def _note(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _synth_to(path: Path, engine: str, voice: str, text: str, p: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="chimera-synth-") as tmp:
        tmp = Path(tmp)
        if engine == "espeak":
            if p.get("sung"):
                words = _words(text)
                body = " ".join(f'<prosody pitch="{c:+d}%">{html.escape(w)}</prosody>'
                                for w, c in zip(words, p["cents"]))
                (tmp / "t.xml").write_text(f'<speak><prosody rate="{p["rate"]}%" range="x-low">'
                                           f"{body}</prosody></speak>")
                cmd = ["espeak-ng", "-m", "-v", voice, "-p", str(p["pitch"]), "-f", str(tmp / "t.xml")]
            else:
                (tmp / "t.txt").write_text(text)
                cmd = ["espeak-ng", "-v", voice, "-p", str(p["pitch"]), "-s", str(p["speed"]),
                       "-f", str(tmp / "t.txt")]
            _run(cmd + ["-w", str(path)], f"espeak-ng {voice}")
        elif engine == "flite":
            (tmp / "t.txt").write_text(text)
            _run(["flite", "-voice", voice, "--setf", f"duration_stretch={p['stretch']:.3f}",
                  "--setf", f"int_f0_target_mean={p['f0']:.1f}", "-f", str(tmp / "t.txt"),
                  "-o", str(path)], f"flite {voice}")
        elif engine == "festival":
            if p.get("sung"):
                words = _words(text)
                parts = []
                for w, m, b in zip(words, p["notes"], p["beats"]):
                    parts.append(f'<DURATION BEATS="{b:.2f}"><PITCH NOTE="{_note(m)}">{w}</PITCH></DURATION>')
                (tmp / "s.xml").write_text(
                    '<?xml version="1.0"?>\n<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" '
                    '"Singing.v0_1.dtd" []>\n' f'<SINGING BPM="{p["bpm"]}">\n' + "\n".join(parts)
                    + "\n</SINGING>\n")
                _run(["text2wave", "-mode", "singing", "-eval", f"(voice_{voice})", str(tmp / "s.xml"),
                      "-o", str(path)], f"festival singing {voice}")
            else:
                (tmp / "t.txt").write_text(text)
                _run(["text2wave", "-eval", f"(voice_{voice})", "-eval",
                      f"(Parameter.set 'Duration_Stretch {p['stretch']:.3f})", str(tmp / "t.txt"),
                      "-o", str(path)], f"festival {voice}")
        else:
            raise ValueError(f"unknown engine {engine!r}")


def utterance(cache: Path, engine: str, voice: str, text: str, params: dict) -> tuple[np.ndarray, int]:
    """Synthesise (or load from the cache) one utterance: mono float32 at the engine's rate."""
    key = hashlib.sha1(json.dumps([CACHE_VERSION, engine, voice, text, params],
                                  sort_keys=True).encode()).hexdigest()
    path = cache / key[:2] / f"{key}.wav"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.wav")
        _synth_to(tmp, engine, voice, text, params)
        os.replace(tmp, path)  # atomic: parallel workers never see half a file
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    # Trim leading/trailing silence so gaps are under our control.
    nz = np.flatnonzero(np.abs(x) > 1e-3)
    if nz.size:
        x = x[max(0, nz[0] - sr // 50): nz[-1] + sr // 50]
    return x, sr


def _draw_params(rng: np.random.Generator, engine: str, voice: str, text: str, sung: bool) -> dict:
    if engine == "espeak":
        p = {"pitch": int(rng.integers(25, 75)), "speed": int(rng.integers(130, 190))}
        if sung:
            n = len(_words(text))
            steps = _melody(rng, n, 0)
            p.update(sung=True, rate=int(rng.integers(45, 70)),
                     cents=[int(round((2 ** (s / 12) - 1) * 100)) for s in steps])
        return p
    if engine == "flite":
        base = 110.0 if voice in ("kal16", "awb", "rms") else 180.0
        return {"stretch": float(rng.uniform(0.85, 1.25)), "f0": float(base * 2 ** rng.uniform(-0.25, 0.25))}
    if engine == "festival":
        if sung:
            words = _words(text)
            base = 48 if voice == "kal_diphone" else 60
            return {"sung": True, "bpm": int(rng.integers(70, 120)), "notes": _melody(rng, len(words), base),
                    "beats": [float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])) * min(2, _syllables(w))
                              for w in words]}
        return {"stretch": float(rng.uniform(0.85, 1.2))}
    raise ValueError(engine)


# ---------------------------------------------------------------------------------------------
# signal processing


def _fft_filter(x: np.ndarray, sr: int, cutoff: float, kind: str, width: float = 0.08) -> np.ndarray:
    """Zero-phase low/high-pass along axis 0: a raised-cosine transition of ``width * cutoff``
    centred on ``cutoff`` applied to the spectrum (no scipy needed)."""
    n = x.shape[0]
    nfft = 1 << max(1, int(np.ceil(np.log2(n))))
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    half = 0.5 * width * cutoff
    ramp = np.clip((f - (cutoff - half)) / (2 * half), 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * ramp)  # 0 below, 1 above the transition
    if kind == "lowpass":
        gain = 1.0 - gain
    elif kind != "highpass":
        raise ValueError(f"unknown filter kind {kind!r}")
    X = np.fft.rfft(x, n=nfft, axis=0)
    X *= gain.reshape((-1,) + (1,) * (x.ndim - 1))
    return np.fft.irfft(X, n=nfft, axis=0)[:n].astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def bandwidth_extend(x: np.ndarray, sr: int, native_nyquist: float, rel_db: float) -> np.ndarray:
    """Add a high band made of harmonics of ``x * |x|`` above the voice's native Nyquist."""
    if native_nyquist >= 0.45 * sr:
        return x
    peak = float(np.max(np.abs(x))) + 1e-9
    nl = (x / peak) * np.abs(x / peak)
    hb = _fft_filter(nl, sr, native_nyquist * 1.02, "highpass")
    g = _rms(x) * 10 ** (rel_db / 20) / _rms(hb)
    return (x + g * hb).astype(np.float32)


def vibrato(x: np.ndarray, sr: int, rate_hz: float, depth_semitones: float) -> np.ndarray:
    """Vibrato by a sinusoidally modulated delay line (pitch deviation = depth_semitones)."""
    t = np.arange(x.shape[0]) / sr
    # Delay d(t) = D sin(2 pi f t) gives a pitch ratio 1 - d'(t); choose D for the given depth.
    dev = 2 ** (depth_semitones / 12) - 1
    D = dev / (2 * np.pi * rate_hz)
    pos = (t - D * np.sin(2 * np.pi * rate_hz * t) - D) * sr
    return np.interp(pos, np.arange(x.shape[0]), x, left=0.0, right=0.0).astype(np.float32)


def _fade(x: np.ndarray, sr: int, ms: float = 10.0) -> np.ndarray:
    n = min(x.shape[0] // 2, int(sr * ms / 1000))
    if n > 0:
        ramp = np.linspace(0, 1, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _native_nyquist(engine: str, voice: str, sr: int) -> float:
    # flite/festival diphone voices are 16 kHz recordings even when written at another rate.
    if engine in ("flite", "festival"):
        return min(sr / 2, 8000.0)
    return sr / 2


def voiced_segment(rng: np.random.Generator, cache: Path, voice: tuple[str, str], texts: list[str],
                   out_rate: int, sung_share: float, bwe_share: float, log: dict) -> np.ndarray:
    """One utterance at ``out_rate`` with pitch/tempo/level variation (and sometimes sung-like)."""
    engine, name = voice
    can_sing = engine == "espeak" or (engine == "festival" and name == "kal_diphone")
    # festival's kal diphone voice is the only real singer: let it sing twice as often.
    share = min(1.0, 2 * sung_share) if engine == "festival" else sung_share
    for attempt in range(5):  # an engine may choke on a text: draw another one
        text = texts[int(rng.integers(len(texts)))]
        sung = can_sing and rng.random() < share
        params = _draw_params(rng, engine, name, text, sung)
        try:
            x, sr = utterance(cache, engine, name, text, params)
        except SynthError as exc:
            err = exc
            continue
        if x.shape[0] >= 0.3 * sr:
            break
        err = SynthError(f"{engine} {name} produced (almost) no sound for {text!r}")
    else:
        raise err
    # A resampling speed change shifts pitch and tempo together by up to +-1.5 semitones.
    shift = float(rng.uniform(-1.5, 1.5))
    ratio = 2 ** (shift / 12)
    y = resample(x, int(round(sr * ratio)), out_rate)
    nyq = _native_nyquist(engine, name, sr) * ratio
    bwe = nyq < 9000 and nyq < 0.45 * out_rate and rng.random() < bwe_share
    if bwe:
        y = bandwidth_extend(y, out_rate, nyq, float(rng.uniform(-32, -20)))
    if sung and rng.random() < 0.8:
        y = vibrato(y, out_rate, float(rng.uniform(4.5, 6.5)), float(rng.uniform(0.2, 0.6)))
    y = y / (_rms(y) + 1e-9) * 10 ** (rng.uniform(-3, 3) / 20)
    log.setdefault("utterances", []).append(
        {"engine": engine, "voice": name, "sung": bool(sung), "shift_semitones": round(shift, 2),
         "bandwidth_extended": bool(bwe), "text": text})
    return _fade(y.astype(np.float32), out_rate)


def speaker_of(voice: tuple[str, str]) -> str:
    """Who is speaking: flite and festival share the kal and slt speakers; an espeak-ng
    variant (m1, f2, ...) sets the timbre whatever the accent."""
    engine, name = voice
    if engine == "espeak":
        return "espeak-" + name.split("+")[-1]
    return {"kal16": "kal", "kal_diphone": "kal", "cmu_us_slt_arctic_hts": "slt"}.get(name, name)


def _pick_voice(rng: np.random.Generator, voices: list[tuple[str, str]]) -> tuple[str, str]:
    engines = sorted({e for e, _ in voices})
    w = np.array([ENGINE_WEIGHTS[e] for e in engines])
    e = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    pool = [v for v in voices if v[0] == e]
    return pool[int(rng.integers(len(pool)))]


# ---------------------------------------------------------------------------------------------
# track builders


@dataclass(frozen=True)
class Options:
    seed: int = 0
    seconds: float = 20.0
    lowpass_share: float = 0.35
    bwe_share: float = 0.5
    sung_share: float = 0.3
    second_voice_share: float = 0.25
    speaker_seconds_max: float = 6.0


def _decodable(path: str, cache: Path) -> str:
    """``path`` if soundfile reads it (libsndfile >= 1.0.29 has Opus), else a WAV decoded once
    with ffmpeg into the cache."""
    try:
        sf.info(path)
        return path
    except Exception:
        pass
    out = cache.parent / "music" / (hashlib.sha1(path.encode()).hexdigest()[:16] + ".wav")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp.wav")
        _run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", path, "-c:a", "pcm_s16le",
              str(tmp)], f"ffmpeg decoding {path}")
        os.replace(tmp, out)
    return str(out)


def _music_segment(rng: np.random.Generator, files: list[str], seconds: float, log: dict,
                   cache: Path) -> np.ndarray:
    n_out = int(round(seconds * MUSIC_RATE))
    for _ in range(8):
        src = files[int(rng.integers(len(files)))]
        path = _decodable(src, cache)
        info = sf.info(path)
        n_in = int(math.ceil(seconds * info.samplerate)) + 64
        start = int(rng.integers(0, max(0, info.frames - n_in) + 1))
        x, sr = read_audio(path, start, n_in)
        x = resample(x, sr, MUSIC_RATE)
        if x.shape[1] == 1:
            x = np.repeat(x, 2, axis=1)
        x = x[:, :2]
        if x.shape[0] < n_out:
            x = np.pad(x, ((0, n_out - x.shape[0]), (0, 0)))
        x = x[:n_out]
        # Reject near-silent stretches (intros/outros) where the level ratio would be meaningless.
        frame_rms = np.sqrt(np.mean(x[: n_out // 4 * 4].reshape(4, -1, 2) ** 2, axis=(1, 2)))
        if frame_rms.min() > 3e-3:
            log.update(music=os.path.basename(src), music_package=_package_of(src),
                       music_offset_s=round(start / info.samplerate, 3))
            return np.ascontiguousarray(x, dtype=np.float32)
    raise SynthError("could not find a non-silent music segment (files: " + ", ".join(files[:3]) + " ...)")


def _package_of(path: str) -> str:
    return "warzone2100-music" if "warzone2100" in path else "wesnoth-1.16-music"


def _quantise_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 stems and their exact int16 sum (caller keeps |a + b| < 1)."""
    qa = np.round(a * 32767).astype(np.int32)
    qb = np.round(b * 32767).astype(np.int32)
    qm = qa + qb
    if np.abs(qm).max() > 32767:
        raise AssertionError("mixture would clip; normalisation failed")
    return qa.astype(np.int16), qb.astype(np.int16), qm.astype(np.int16)


def build_song(split: str, index: int, opts: Options, out_dir: Path, cache: Path) -> dict:
    """One MUSDB-like track; returns its metadata."""
    rng = np.random.default_rng([opts.seed, SPLIT_ID[split], index, 0x50])
    voices = split_voices(split)
    texts = fortune_texts()[split]
    log: dict = {"split": split}
    acc = _music_segment(rng, music_files()[split], opts.seconds, log, cache)
    if rng.random() < opts.lowpass_share:
        cutoff = float(rng.uniform(6000, 11000))
        acc = _fft_filter(acc, MUSIC_RATE, cutoff, "lowpass")
        log["accompaniment_lowpass_hz"] = round(cutoff)
    n = acc.shape[0]
    main = _pick_voice(rng, voices)
    second = _pick_voice(rng, voices) if rng.random() < opts.second_voice_share else None
    log["voices"] = [":".join(main)] + ([":".join(second)] if second else [])
    vocal = np.zeros(n, np.float32)
    t = int(rng.uniform(0, 1.5) * MUSIC_RATE)
    while t < n - MUSIC_RATE // 2:
        v = second if second is not None and rng.random() < 0.35 else main
        y = voiced_segment(rng, cache, v, texts, MUSIC_RATE, opts.sung_share, opts.bwe_share, log)
        y = _fade(y[: n - t], MUSIC_RATE)
        vocal[t: t + y.shape[0]] += y
        gap = rng.uniform(2.0, 4.0) if rng.random() < 0.15 else rng.uniform(0.15, 1.0)
        t += y.shape[0] + int(gap * MUSIC_RATE)
    pan = float(rng.uniform(-0.35, 0.35))  # constant-power pan
    theta = (pan + 1) * np.pi / 4
    vocals = np.stack([vocal * np.cos(theta), vocal * np.sin(theta)], axis=1).astype(np.float32)
    level_db = float(rng.uniform(-5.0, 5.0))
    vocals *= _rms(acc) / _rms(vocals) * 10 ** (level_db / 20)
    peak = max(np.abs(vocals + acc).max(), np.abs(vocals).max(), np.abs(acc).max())
    g = 0.9 / peak
    qv, qa, qm = _quantise_pair(vocals * g, acc * g)
    d = out_dir / split / f"{split}-{index:03d}"
    write_audio(d / "vocals.wav", qv, MUSIC_RATE)
    write_audio(d / "accompaniment.wav", qa, MUSIC_RATE)
    write_audio(d / "mixture.wav", qm, MUSIC_RATE)
    log.update(name=d.name, vocals_to_accompaniment_db=round(level_db, 3), pan=round(pan, 3))
    return log


def build_speaker_mix(split: str, index: int, opts: Options, out_dir: Path, cache: Path) -> dict:
    """One wsj0-2mix-style example ("min" mode: cut to the shorter utterance)."""
    data_split = WSJ_SPLITS[split]
    rng = np.random.default_rng([opts.seed, SPLIT_ID[data_split], index, 0x2A])
    voices = split_voices(split)
    texts = fortune_texts()[data_split]
    v1 = _pick_voice(rng, voices)
    v2 = v1
    while speaker_of(v2) == speaker_of(v1):  # two different speakers
        v2 = _pick_voice(rng, voices)
    log: dict = {}
    s = [voiced_segment(rng, cache, v, texts, SPEAKER_RATE, 0.0, 0.0, log) for v in (v1, v2)]
    n = min(min(x.shape[0] for x in s), int(opts.speaker_seconds_max * SPEAKER_RATE))
    s = [_fade(x[:n], SPEAKER_RATE) for x in s]
    snr = float(rng.uniform(-2.5, 2.5))
    s[1] = s[1] * _rms(s[0]) / _rms(s[1]) * 10 ** (-snr / 20)
    peak = max(np.abs(s[0] + s[1]).max(), np.abs(s[0]).max(), np.abs(s[1]).max())
    g = 0.9 / peak
    q1, q2, qm = _quantise_pair(s[0] * g, s[1] * g)
    name = f"{index:05d}_{v1[1].replace('+', '-')}_{v2[1].replace('+', '-')}_{snr:+.2f}.wav"
    for sub, q in (("s1", q1), ("s2", q2), ("mix", qm)):
        write_audio(out_dir / split / sub / name, q, SPEAKER_RATE)
    return {"name": name, "voices": [":".join(v1), ":".join(v2)], "s1_to_s2_db": round(snr, 3),
            "seconds": round(n / SPEAKER_RATE, 3)}


# ---------------------------------------------------------------------------------------------
# driver


def _job(args):
    kind, split, index, opts, out_dir, cache = args
    fn = build_song if kind == "song" else build_speaker_mix
    return fn(split, index, opts, Path(out_dir), Path(cache))


def _build_split(kind: str, split: str, count: int, opts: Options, out_dir: Path, cache: Path,
                 jobs: int, config: dict, progress) -> bool:
    """Build one split unless it already exists with the same options. Returns True if built."""
    stamp = out_dir / split / ".complete.json"
    if count <= 0:
        return False
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == config:
                return False
        except (OSError, ValueError):
            pass
    if (out_dir / split).exists():
        shutil.rmtree(out_dir / split)  # options changed: our own output, rebuilt from scratch
    work = [(kind, split, i, opts, str(out_dir), str(cache)) for i in range(count)]
    meta = []
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:
            for m in pool.imap(_job, work):
                meta.append(m)
                progress(f"{kind} {split}", len(meta), count)
    else:
        for w in work:
            meta.append(_job(w))
            progress(f"{kind} {split}", len(meta), count)
    (out_dir / split / "metadata.json").write_text(json.dumps(meta, indent=1))
    stamp.write_text(json.dumps(config))
    return True


# Checked against /usr/share/doc/<pkg>/copyright (Debian bookworm); the full texts are copied
# into LICENSES.md next to the data.
LICENCE_SUMMARY = {
    "warzone2100-music": "GPL-2+ (Warzone 2100 Project; the music falls under `Files: *`)",
    "wesnoth-1.16-music": "GPL-2+ (Battle for Wesnoth project)",
    "espeak-ng": "GPL-3+ (eSpeak NG)",
    "flite": "CMU Flite licence (BSD-like, free use with notice); a few files public domain / GPL",
    "festival": "CSTR/University of Edinburgh licence (BSD-like, free use with notice)",
    "festvox-kallpc16k": "Festvox/CMU licence (BSD-like, free use with notice; Black & Lenzo)",
    "festvox-us-slt-hts": "BSD-3-clause + CMU ARCTIC/EST (BSD-like) licences",
    "festlex-cmu": "CSTR/University of Edinburgh licence (BSD-like), from CMUdict",
    "festlex-poslex": "CSTR/University of Edinburgh licence (BSD-like)",
    "fortunes-min": "BSD (UC Berkeley, advertising clause rescinded)",
    "fortunes": "BSD (UC Berkeley); quotations belong to their authors",
}


def _package_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "not installed"


def write_licences(out_dir: Path) -> Path:
    lines = [
        "# Licences of the material in this directory",
        "",
        "Generated by `python -m chimera.data.synth` from these Debian packages. The music is used",
        "as accompaniment (re-cut, resampled, sometimes low-pass filtered); voices are synthesised",
        "by the speech engines from texts of the fortune packages. Full copyright files follow.",
        "",
        "| package | version | role | licence (summary) |",
        "|---|---|---|---|",
    ]
    roles = {**{p: "accompaniment (music)" for p in MUSIC_PACKAGES},
             **{p: "vocals (speech synthesis)" for p in VOICE_PACKAGES},
             **{p: "texts read by the voices" for p in TEXT_PACKAGES}}
    for pkg in DEBIAN_PACKAGES:
        lines.append(f"| {pkg} | {_package_version(pkg)} | {roles[pkg]} | {LICENCE_SUMMARY[pkg]} |")
    for pkg in DEBIAN_PACKAGES:
        p = Path("/usr/share/doc") / pkg / "copyright"
        if p.exists():
            text = p.read_text(errors="replace").rstrip()
            lines += ["", f"## {pkg}", "", f"From `{p}`:", "", "```", text, "```"]
    path = out_dir / "LICENSES.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def make(out: str | os.PathLike, *, seed: int = 0, train: int = 480, valid: int = 8, test: int = 8,
         seconds: float = 20.0, speakers: tuple[int, int, int] = (200, 40, 40), jobs: int = 1,
         cache: str | os.PathLike | None = None, quiet: bool = False, **opt_kwargs) -> dict:
    """Build everything under ``out``; returns counts and timing."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else out / ".cache" / "utterances"
    opts = Options(seed=seed, seconds=seconds, **opt_kwargs)
    missing = missing_packages()
    if missing:
        raise SynthError("missing Debian packages: " + " ".join(missing)
                         + " (run `make demo-data`, or apt-get install -y them)")

    tty = sys.stderr.isatty()

    def progress(what, i, n):
        if quiet or not (tty or i == n or i % max(1, n // 5) == 0):
            return
        print(f"\r{what}: {i}/{n}" if tty else f"{what}: {i}/{n}", end="\n" if i == n or not tty else "",
              file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    built, timing = {}, {}
    work = [("song", "musdb", s, c) for s, c in (("train", train), ("valid", valid), ("test", test))]
    work += [("speakers", "wsj0-2mix", s, c) for s, c in zip(("tr", "cv", "tt"), speakers)]
    for kind, sub, split, count in work:
        cfg = {"kind": kind, "count": count, "options": asdict(opts), "version": CACHE_VERSION,
               "voices": [":".join(v) for v in split_voices(split)]}
        t = time.perf_counter()
        built[f"{sub}/{split}"] = _build_split(kind, split, count, opts, out / sub, cache, jobs, cfg,
                                               progress)
        timing[f"{sub}/{split}"] = round(time.perf_counter() - t, 2)
    write_licences(out)
    elapsed = time.perf_counter() - t0
    return {"out": str(out), "built": built, "split_seconds": timing, "seconds": round(elapsed, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chimera.data.synth", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=480, help="training tracks")
    ap.add_argument("--valid", type=int, default=8,
                    help="validation tracks (train voices, other music/texts)")
    ap.add_argument("--test", type=int, default=8, help="held-out tracks (other voices, music and texts)")
    ap.add_argument("--seconds", type=float, default=20.0, help="track length")
    ap.add_argument("--speakers", type=int, nargs=3, default=[200, 40, 40], metavar=("TR", "CV", "TT"),
                    help="wsj0-2mix-style examples per split (0 0 0 to skip)")
    ap.add_argument("--lowpass-share", type=float, default=0.35)
    ap.add_argument("--bwe-share", type=float, default=0.5)
    ap.add_argument("--sung-share", type=float, default=0.3)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--cache", default=None, help="utterance cache (default OUT/.cache/utterances)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        r = make(a.out, seed=a.seed, train=a.train, valid=a.valid, test=a.test, seconds=a.seconds,
                 speakers=tuple(a.speakers), jobs=a.jobs, cache=a.cache, quiet=a.quiet,
                 lowpass_share=a.lowpass_share, bwe_share=a.bwe_share, sung_share=a.sung_share)
    except SynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = [k for k, v in r["built"].items() if v]
    what = ", ".join(done) or "nothing, up to date"
    print(f"demo data in {r['out']} ({r['seconds']:.1f} s; built: {what})")
    if done:
        per = (f"{k} {v:.1f}" for k, v in r["split_seconds"].items() if r["built"][k])
        print("seconds per split: " + ", ".join(per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
