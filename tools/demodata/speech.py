"""Synthetic voices: espeak-ng, flite and festival reading texts (and singing them), cached.

Only the voices issue 20 allows are used for training: espeak-ng accents en-us, en-gb,
en-029 and en-gb-x-rp (any variant), flite kal16/awb/slt, festival kal diphone and slt HTS.
The held-out test voices are other espeak-ng accents and variants and flite's rms.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from .dsp import trim_silence
from .external import DataError, run
from .melody import note_name, pentatonic_melody

CACHE_VERSION = 2

# Voices: (engine, name). Train and valid share the "train" voices; test has its own.
# Many espeak-ng variants (timbre presets) in training: with few, a model learns the voices
# rather than "voice" and does not carry over to the held-out ones.
ESPEAK_TRAIN_ACCENTS = ("en-us", "en-gb", "en-029", "en-gb-x-rp")
ESPEAK_TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m8", "f1", "f2", "f3", "Andy", "Annie", "Michael", "Alex", "Alicia",
    "Andrea", "AnxiousAndy", "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco",
    "Mario", "Mike", "Nguyen", "Storm", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty",
    "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "grandma",
    "grandpa", "gustave", "iven", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "marcelo",
    "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "sandro", "shelby", "steph", "travis", "victor", "zac")
ESPEAK_TRAIN = [(a, v) for a in ESPEAK_TRAIN_ACCENTS for v in ESPEAK_TRAIN_VARIANTS]
ESPEAK_TEST = [(a, v) for a in ("en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
               for v in ("m5", "m6", "m7", "f4", "f5", "linda")]
VOICES = {
    "train": [("espeak", f"{a}+{v}") for a, v in ESPEAK_TRAIN]
    + [("flite", "kal16"), ("flite", "awb"), ("flite", "slt")]
    + [("festival", "kal_diphone"), ("festival", "cmu_us_slt_arctic_hts")],
    "test": [("espeak", f"{a}+{v}") for a, v in ESPEAK_TEST] + [("flite", "rms")],
}
# Engines get drawn evenly (not in proportion to how many voices each has).
ENGINE_WEIGHTS = {"espeak": 0.45, "flite": 0.3, "festival": 0.25}

# Measured band limits of what each engine writes (the highest band within 60 dB of the
# loudest): espeak-ng writes 22.05 kHz, flite and festival's kal 16 kHz recordings, and the
# slt HTS voice 32 kHz with content up to 16 kHz.
NATIVE_NYQUIST = {"espeak": 11025.0, "flite": 8000.0, "kal_diphone": 8000.0,
                  "cmu_us_slt_arctic_hts": 16000.0}


def check_voices() -> None:
    """espeak-ng quietly speaks with its default voice for an unknown accent or variant
    (and flite with kal for an unknown voice): a typo would put one timbre in training and
    held-out data alike. Every voice used must be installed."""
    listing = "listing the installed voices"
    accents = {ln.split()[1] for ln in run(["espeak-ng", "--voices"], listing).splitlines()[1:] if len(ln.split()) > 1}
    variants = set(re.findall(r"!v/(\S+)", run(["espeak-ng", "--voices=variant"], listing)))
    flite = set(run(["flite", "-lv"], listing).partition(":")[2].split())
    missing = []
    for engine, name in VOICES["train"] + VOICES["test"]:
        accent, _, variant = name.partition("+")
        if engine == "espeak" and (accent not in accents or (variant and variant not in variants)):
            missing.append(f"espeak-ng {name}")
        elif engine == "flite" and name not in flite:
            missing.append(f"flite {name}")
    if missing:
        raise DataError("voices not installed (the engines would fall back to a default voice): "
                        + ", ".join(missing))


def native_nyquist(engine: str, voice: str) -> float:
    return NATIVE_NYQUIST.get(voice, NATIVE_NYQUIST.get(engine, 8000.0))


def voices_of(held_out: bool) -> list[tuple[str, str]]:
    return VOICES["test" if held_out else "train"]


def speaker_of(voice: tuple[str, str]) -> str:
    """Who is speaking: flite and festival share the kal and slt speakers; an espeak-ng
    variant (m1, f2, ...) sets the timbre whatever the accent."""
    engine, name = voice
    if engine == "espeak":
        return "espeak-" + name.split("+")[-1]
    return {"kal16": "kal", "kal_diphone": "kal", "cmu_us_slt_arctic_hts": "slt"}.get(name, name)


def pick_voice(rng: np.random.Generator, voices: list[tuple[str, str]]) -> tuple[str, str]:
    engines = sorted({e for e, _ in voices})
    w = np.array([ENGINE_WEIGHTS[e] for e in engines])
    e = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    pool = [v for v in voices if v[0] == e]
    return pool[int(rng.integers(len(pool)))]


def can_sing(voice: tuple[str, str]) -> bool:
    """espeak-ng sings-like through SSML; of festival's voices only the kal diphone voice
    follows the singing mode's notes (slt HTS ignores them and speaks)."""
    engine, name = voice
    return engine == "espeak" or (engine == "festival" and name == "kal_diphone")


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?", text)


def _syllables(word: str) -> int:
    w = word.lower()
    return max(1, len(re.findall(r"[aeiouy]+", w)) - (w.endswith("e") and len(w) > 3))


def _synth_to(path: Path, engine: str, voice: str, text: str, p: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="chimera-synth-") as tmp:
        tmp = Path(tmp)
        if engine == "espeak":
            if p.get("sung"):
                body = " ".join(f'<prosody pitch="{c:+d}%">{html.escape(w)}</prosody>'
                                for w, c in zip(words(text), p["cents"]))
                (tmp / "t.xml").write_text(f'<speak><prosody rate="{p["rate"]}%" range="x-low">'
                                           f"{body}</prosody></speak>")
                cmd = ["espeak-ng", "-m", "-v", voice, "-p", str(p["pitch"]), "-f", str(tmp / "t.xml")]
            else:
                (tmp / "t.txt").write_text(text)
                cmd = ["espeak-ng", "-v", voice, "-p", str(p["pitch"]), "-s", str(p["speed"]),
                       "-f", str(tmp / "t.txt")]
            run(cmd + ["-w", str(path)], f"espeak-ng {voice}")
        elif engine == "flite":
            (tmp / "t.txt").write_text(text)
            run(["flite", "-voice", voice, "--setf", f"duration_stretch={p['stretch']:.3f}",
                 "--setf", f"int_f0_target_mean={p['f0']:.1f}", "-f", str(tmp / "t.txt"),
                 "-o", str(path)], f"flite {voice}")
        elif engine == "festival":
            if p.get("sung"):
                parts = [f'<DURATION BEATS="{b:.2f}"><PITCH NOTE="{note_name(m)}">{w}</PITCH></DURATION>'
                         for w, m, b in zip(words(text), p["notes"], p["beats"])]
                (tmp / "s.xml").write_text(
                    '<?xml version="1.0"?>\n<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" '
                    '"Singing.v0_1.dtd" []>\n' f'<SINGING BPM="{p["bpm"]}">\n' + "\n".join(parts)
                    + "\n</SINGING>\n")
                run(["text2wave", "-mode", "singing", "-eval", f"(voice_{voice})", str(tmp / "s.xml"),
                     "-o", str(path)], f"festival singing {voice}")
            else:
                (tmp / "t.txt").write_text(text)
                run(["text2wave", "-eval", f"(voice_{voice})", "-eval",
                     f"(Parameter.set 'Duration_Stretch {p['stretch']:.3f})", str(tmp / "t.txt"),
                     "-o", str(path)], f"festival {voice}")
        else:
            raise ValueError(f"unknown engine {engine!r}")


def cached_render(cache: Path, key_parts: list, render) -> Path:
    """The cache file for ``key_parts``; ``render(tmp_path)`` writes it when missing (atomic
    rename, so parallel workers never see half a file)."""
    key = hashlib.sha1(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    path = cache / key[:2] / f"{key}.wav"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.wav")
        render(tmp)
        os.replace(tmp, path)
    return path


def utterance(cache: Path, engine: str, voice: str, text: str, params: dict) -> tuple[np.ndarray, int]:
    """Synthesise (or load from the cache) one utterance: mono float32 at the engine's rate."""
    path = cached_render(cache, [CACHE_VERSION, engine, voice, text, params],
                         lambda tmp: _synth_to(tmp, engine, voice, text, params))
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return trim_silence(x.mean(axis=1), sr), sr


def draw_params(rng: np.random.Generator, engine: str, voice: str, text: str, sung: bool) -> dict:
    if engine == "espeak":
        p = {"pitch": int(rng.integers(25, 75)), "speed": int(rng.integers(130, 190))}
        if sung:
            steps = pentatonic_melody(rng, len(words(text)), 0)
            p.update(sung=True, rate=int(rng.integers(45, 70)),
                     cents=[int(round((2 ** (s / 12) - 1) * 100)) for s in steps])
        return p
    if engine == "flite":
        base = 110.0 if voice in ("kal16", "awb", "rms") else 180.0
        return {"stretch": float(rng.uniform(0.85, 1.25)), "f0": float(base * 2 ** rng.uniform(-0.25, 0.25))}
    if engine == "festival":
        if sung:
            ws = words(text)
            base = 48 if voice == "kal_diphone" else 60
            return {"sung": True, "bpm": int(rng.integers(70, 120)), "notes": pentatonic_melody(rng, len(ws), base),
                    "beats": [float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])) * min(2, _syllables(w)) for w in ws]}
        return {"stretch": float(rng.uniform(0.85, 1.2))}
    raise ValueError(engine)
