"""Building one example: a MUSDB-like song (vocals over real music, or a solo), or a
wsj0-2mix-style two-speaker mixture."""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import soundfile as sf

from . import material, singing, speech
from chimera.audio import read_audio, resample, write_audio
from .dsp import bandwidth_extend, fade, fft_filter, formant_frames, formant_warp, quantise_pair, rms, tilt, vibrato
from .external import DataError, run

MUSIC_RATE = 44100
SPEAKER_RATE = 8000
KINDS = ("speech", "recorded", "sung")  # synthetic speech (and sung-like TTS), recorded speech, sampled choir


@dataclass(frozen=True)
class SongSplit:
    """What the tracks of one ``musdb/<name>`` folder are made of.

    ``material``: which hash split of music, texts and recorded clips (and which voices,
    presets and registers: the held-out ones for ``test``); ``kinds``: weights of the
    vocal kinds (each track draws a main kind, each utterance keeps it with probability
    0.8); ``solo``: ``"instrumental"`` (vocals silent) or ``"acappella"`` (accompaniment
    silent) for every track; ``solo_shares``: the chance that a track of a mixed split is
    an instrumental / an a cappella one."""

    name: str
    split_id: int
    material: str
    kinds: dict = field(default_factory=lambda: {"speech": 1.0})
    solo: str | None = None
    solo_shares: tuple[float, float] = (0.0, 0.0)


MIXED = {"speech": 0.4, "recorded": 0.3, "sung": 0.3}
SONG_SPLITS = {s.name: s for s in (
    SongSplit("train", 1, "train", MIXED, solo_shares=(0.04, 0.04)),
    SongSplit("valid", 2, "valid", MIXED),
    SongSplit("test-synthetic", 3, "test", {"speech": 1.0}),
    SongSplit("test-real", 4, "test", {"recorded": 1.0}),
    SongSplit("test-sung", 5, "test", {"sung": 1.0}),
    SongSplit("solo-instrumental", 6, "test", solo="instrumental"),
    SongSplit("solo-synthetic", 7, "test", {"speech": 1.0}, solo="acappella"),
    SongSplit("solo-real", 8, "test", {"recorded": 1.0}, solo="acappella"),
    SongSplit("solo-sung", 9, "test", {"sung": 1.0}, solo="acappella"),
)}
HELD_OUT_SPLITS = tuple(n for n in SONG_SPLITS if n not in ("train", "valid"))
WSJ_SPLITS = {"tr": ("train", 1), "cv": ("valid", 2), "tt": ("test", 3)}


@dataclass(frozen=True)
class Options:
    seed: int = 0
    seconds: float = 20.0
    lowpass_share: float = 0.35
    bwe_share: float = 0.5
    sung_share: float = 0.3
    second_voice_share: float = 0.25
    speaker_seconds_max: float = 6.0
    # Options older data was made without: left out of a split's stamp at these defaults.
    formant_share: float = 0.0   # training sung phrases and recorded clips given other formants
    train_kinds: tuple = ()      # (kind, weight) pairs replacing MIXED for the train split


LATER_OPTIONS = {f.name: f.default for f in fields(Options) if f.name in ("formant_share", "train_kinds")}


# --------------------------------------------------------------------------- vocal pieces


def _to_rate(rng: np.random.Generator, x: np.ndarray, sr: int, nyquist: float, out_rate: int,
             bwe_share: float, entry: dict, shift: bool = True) -> np.ndarray:
    """Resample to ``out_rate`` (a speed change of up to +-1.5 semitones when ``shift``) and
    give a band-limited piece (``nyquist``: its native band edge) a synthetic high band
    ``bwe_share`` of the time."""
    semitones = float(rng.uniform(-1.5, 1.5)) if shift else 0.0
    ratio = 2 ** (semitones / 12)
    y = resample(x, int(round(sr * ratio)), out_rate)
    nyq = nyquist * ratio
    bwe = nyq < 0.45 * out_rate and rng.random() < bwe_share
    if bwe:
        y = bandwidth_extend(y, out_rate, nyq, float(rng.uniform(-32, -20)),
                             noise_share=float(rng.uniform(0.0, 0.7)), rng=rng)
    entry.update(shift_semitones=round(semitones, 2), bandwidth_extended=bool(bwe))
    return y


def speech_piece(rng, cache, voice, texts, out_rate: int, sung_share: float, bwe_share: float, log: list) -> np.ndarray:
    """One synthetic utterance at ``out_rate`` with pitch/tempo/level variation (sometimes sung)."""
    engine, name = voice
    # festival's kal diphone voice is the only real singer: let it sing twice as often.
    share = min(1.0, 2 * sung_share) if engine == "festival" else sung_share
    for _ in range(5):  # an engine may choke on a text: draw another one
        text = texts[int(rng.integers(len(texts)))]
        sung = speech.can_sing(voice) and rng.random() < share
        params = speech.draw_params(rng, engine, name, text, sung)
        try:
            x, sr = speech.utterance(cache, engine, name, text, params)
        except DataError as exc:
            err = exc
            continue
        if x.shape[0] >= 0.3 * sr:
            break
        err = DataError(f"{engine} {name} produced (almost) no sound for {text!r}")
    else:
        raise err
    entry = {"kind": "speech", "engine": engine, "voice": name, "sung": bool(sung), "text": text}
    y = _to_rate(rng, x, sr, speech.native_nyquist(engine, name), out_rate, bwe_share, entry)
    if sung and rng.random() < 0.8:
        y = vibrato(y, out_rate, float(rng.uniform(4.5, 6.5)), float(rng.uniform(0.2, 0.6)))
    log.append(entry)
    return y


def recorded_piece(rng, clips: list, opts: Options, log: list, warp: bool = False) -> np.ndarray:
    clip = clips[int(rng.integers(len(clips)))]
    x, sr = material.load_clip(clip.name)
    # Few recorded minutes: vary their colour too (a random tilt of up to +-3 dB per octave).
    colour = float(rng.uniform(-3.0, 3.0))
    entry = {"kind": "recorded", "clip": clip.name, "speaker": clip.speaker, "tilt_db_per_octave": round(colour, 2)}
    y = _to_rate(rng, tilt(x, sr, colour), sr, sr / 2, MUSIC_RATE, opts.bwe_share, entry)
    if warp:
        y = _maybe_warp(rng, y, opts, entry)
    log.append(entry)
    return y


def _maybe_warp(rng, y: np.ndarray, opts: Options, entry: dict) -> np.ndarray:
    """``opts.formant_share`` of the time, other vowels and another singer's formants.
    Called for training material only; draws nothing when the share is 0 (older data stays
    bit for bit)."""
    if opts.formant_share <= 0 or rng.random() >= opts.formant_share:
        return y
    low, high = formant_frames(rng, y.shape[0], sr=MUSIC_RATE)
    entry.update(formant_low=[round(float(low.min()), 3), round(float(low.max()), 3)],
                 formant_high=[round(float(high.min()), 3), round(float(high.max()), 3)])
    return formant_warp(y, MUSIC_RATE, low, high)


def sung_piece(rng, cache, split_material: str, opts: Options, log: list) -> np.ndarray:
    p = singing.draw_phrase(rng, split_material)
    x, sr = singing.render_phrase(cache, p)
    entry = {"kind": "sung", "program": p["program"], "notes": p["parts"][0], "lines": len(p["parts"])}
    y = _to_rate(rng, x, sr, sr / 2, MUSIC_RATE, opts.bwe_share, entry, shift=False)
    if split_material == "train":
        y = _maybe_warp(rng, y, opts, entry)
    log.append(entry)
    return y


# --------------------------------------------------------------------------- music


def _decodable(path: str, music_cache: Path) -> str:
    """``path`` if soundfile reads it (libsndfile >= 1.0.29 has Opus), else a WAV decoded once
    with ffmpeg into ``music_cache``."""
    try:
        sf.info(path)
        return path
    except Exception:
        pass
    out = music_cache / (hashlib.sha1(path.encode()).hexdigest()[:16] + ".wav")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp.wav")
        run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", path, "-c:a", "pcm_s16le", str(tmp)],
            f"ffmpeg decoding {path}")
        os.replace(tmp, out)
    return str(out)


def music_segment(rng: np.random.Generator, files: list, seconds: float, log: dict,
                  music_cache: Path) -> np.ndarray:
    """A random non-silent stretch of ``seconds`` from one of ``files`` (long enough ones),
    stereo at the music rate."""
    n_out = int(round(seconds * MUSIC_RATE))
    for _ in range(16):
        mf = files[int(rng.integers(len(files)))]
        path = _decodable(mf.path, music_cache)
        info = sf.info(path)
        n_in = int(math.ceil(seconds * info.samplerate)) + 64
        if info.frames < n_in:
            continue
        start = int(rng.integers(0, info.frames - n_in + 1))
        x, sr = read_audio(path, start, n_in)
        x = resample(x, sr, MUSIC_RATE)
        x = np.repeat(x, 2, axis=1) if x.shape[1] == 1 else x[:, :2]
        x = np.pad(x, ((0, max(0, n_out - x.shape[0])), (0, 0)))[:n_out]
        # Reject near-silent stretches (intros/outros) where the level ratio would be meaningless.
        quarters = n_out // 4 * 4
        frame_rms = np.sqrt(np.mean(x[:quarters].reshape(4, -1, 2) ** 2, axis=(1, 2)))
        if frame_rms.min() > 3e-3:
            log.update(music=os.path.basename(mf.path), music_package=mf.package,
                       music_offset_s=round(start / info.samplerate, 3))
            return np.ascontiguousarray(x, dtype=np.float32)
    raise DataError(f"could not find a non-silent {seconds:g} s music segment in {len(files)} files "
                    f"({files[0].path} ...)")


# --------------------------------------------------------------------------- tracks


def _draw(rng: np.random.Generator, weights: dict) -> str:
    names = sorted(weights)
    w = np.array([weights[k] for k in names], dtype=float)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def vocal_line(rng, spec: SongSplit, n: int, opts: Options, cache: Path, log: dict) -> np.ndarray:
    """Utterances, phrases or clips laid out with gaps over ``n`` samples (mono)."""
    held_out = spec.material == "test"
    voices = speech.voices_of(held_out)
    texts = material.fortune_texts()[spec.material]
    clips = material.recorded_clips()[spec.material]
    kinds = dict(opts.train_kinds) if spec.name == "train" and opts.train_kinds else spec.kinds
    main_kind = _draw(rng, kinds)
    main = speech.pick_voice(rng, voices)
    second = speech.pick_voice(rng, voices) if rng.random() < opts.second_voice_share else None
    log.update(kind=main_kind, voices=[":".join(main)] + ([":".join(second)] if second else []))
    pieces: list = []
    vocal = np.zeros(n, np.float32)
    t = int(rng.uniform(0, 1.5) * MUSIC_RATE)
    while t < n - MUSIC_RATE // 2:
        kind = main_kind if rng.random() < 0.8 else _draw(rng, kinds)
        if kind == "speech":
            v = second if second is not None and rng.random() < 0.35 else main
            y = speech_piece(rng, cache, v, texts, MUSIC_RATE, opts.sung_share, opts.bwe_share, pieces)
        elif kind == "recorded":
            y = recorded_piece(rng, clips, opts, pieces, warp=spec.material == "train")
        else:
            y = sung_piece(rng, cache, spec.material, opts, pieces)
        y = y / (rms(y) + 1e-9) * 10 ** (rng.uniform(-3, 3) / 20)
        y = fade(y[: n - t].astype(np.float32), MUSIC_RATE)
        vocal[t: t + y.shape[0]] += y
        gap = rng.uniform(2.0, 4.0) if rng.random() < 0.15 else rng.uniform(0.15, 1.0)
        t += y.shape[0] + int(gap * MUSIC_RATE)
    log["utterances"] = pieces
    return vocal


def build_song(split: str, index: int, opts: Options, out_dir: Path, cache: Path,
               seconds: float | None = None, music_cache: Path | None = None) -> dict:
    """One MUSDB-like track of ``SONG_SPLITS[split]``; returns its metadata. Music that only
    ffmpeg decodes is cached in ``music_cache`` (default ``cache/music``)."""
    spec = SONG_SPLITS[split]
    seconds = opts.seconds if seconds is None else seconds
    rng = np.random.default_rng([opts.seed, spec.split_id, index, 0x50])
    log: dict = {"split": split}
    solo = spec.solo
    if solo is None:
        u = rng.random()
        i_share, a_share = spec.solo_shares
        solo = "instrumental" if u < i_share else "acappella" if u < i_share + a_share else None
    acc = music_segment(rng, material.music_files()[spec.material], seconds, log,
                        cache / "music" if music_cache is None else music_cache)
    if rng.random() < opts.lowpass_share:
        cutoff = float(np.exp(rng.uniform(np.log(5000), np.log(16000))))
        acc = fft_filter(acc, MUSIC_RATE, cutoff, "lowpass")
        log["accompaniment_lowpass_hz"] = round(cutoff)
    n = acc.shape[0]
    vocal = vocal_line(rng, spec, n, opts, cache, log) if solo != "instrumental" else np.zeros(n, np.float32)
    pan = float(rng.uniform(-0.35, 0.35))  # constant-power pan
    theta = (pan + 1) * np.pi / 4
    vocals = np.stack([vocal * np.cos(theta), vocal * np.sin(theta)], axis=1).astype(np.float32)
    level_db = float(rng.uniform(-5.0, 5.0))
    if solo is None:
        vocals *= rms(acc) / rms(vocals) * 10 ** (level_db / 20)
    elif solo == "acappella":
        acc = np.zeros_like(acc)
    peak = max(np.abs(vocals + acc).max(), np.abs(vocals).max(), np.abs(acc).max())
    g = 0.9 / peak
    qv, qa, qm = quantise_pair(vocals * g, acc * g)
    d = out_dir / split / f"{split}-{index:03d}"
    write_audio(d / "vocals.wav", qv, MUSIC_RATE)
    write_audio(d / "accompaniment.wav", qa, MUSIC_RATE)
    write_audio(d / "mixture.wav", qm, MUSIC_RATE)
    log.update(name=d.name, solo=solo, pan=round(pan, 3),
               vocals_to_accompaniment_db=round(level_db, 3) if solo is None else None)
    return log


def build_speaker_mix(split: str, index: int, opts: Options, out_dir: Path, cache: Path) -> dict:
    """One wsj0-2mix-style example ("min" mode: cut to the shorter utterance)."""
    data_split, split_id = WSJ_SPLITS[split]
    rng = np.random.default_rng([opts.seed, split_id, index, 0x2A])
    voices = speech.voices_of(data_split == "test")
    texts = material.fortune_texts()[data_split]
    v1 = speech.pick_voice(rng, voices)
    v2 = v1
    while speech.speaker_of(v2) == speech.speaker_of(v1):  # two different speakers
        v2 = speech.pick_voice(rng, voices)
    pieces: list = []
    s = [speech_piece(rng, cache, v, texts, SPEAKER_RATE, 0.0, 0.0, pieces) for v in (v1, v2)]
    s = [x / (rms(x) + 1e-9) for x in s]
    n = min(min(x.shape[0] for x in s), int(opts.speaker_seconds_max * SPEAKER_RATE))
    s = [fade(x[:n].astype(np.float32), SPEAKER_RATE) for x in s]
    snr = float(rng.uniform(-2.5, 2.5))
    s[1] = s[1] * rms(s[0]) / rms(s[1]) * 10 ** (-snr / 20)
    peak = max(np.abs(s[0] + s[1]).max(), np.abs(s[0]).max(), np.abs(s[1]).max())
    g = 0.9 / peak
    q1, q2, qm = quantise_pair(s[0] * g, s[1] * g)
    name = f"{index:05d}_{v1[1].replace('+', '-')}_{v2[1].replace('+', '-')}_{snr:+.2f}.wav"
    for sub, q in (("s1", q1), ("s2", q2), ("mix", qm)):
        write_audio(out_dir / split / sub / name, q, SPEAKER_RATE)
    return {"name": name, "voices": [":".join(v1), ":".join(v2)], "s1_to_s2_db": round(snr, 3),
            "seconds": round(n / SPEAKER_RATE, 3)}
