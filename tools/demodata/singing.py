"""Sung vowels: the choir and voice presets of fluid-soundfont-gm (sampled recordings)
rendered by fluidsynth from melodies generated here: one to three lines in harmony, several
registers, legato, swells and vibrato. Train/valid and test use different presets and
registers (and their own random melodies).

All renders are 44.1 kHz and full band (the presets' samples reach 10-17 kHz).
"""
from __future__ import annotations

import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from .dsp import trim_silence
from .external import DataError, run
from .melody import SCALES, scale_notes, walk
from .packages import dpkg_files
from .speech import cached_render

RATE = 44100
# Of the sung renders only (speech.CACHE_VERSION keys the utterances): 2 since repeated
# pitches are held for their full length, so renders cached before are not reused.
CACHE_VERSION = 2
# GM programs of FluidR3_GM's voice presets (bank 0): 52 "Ahh Choir", 53 "Ohh Voices",
# 54 "Synth Voice", 85 "Solo Vox", 91 "Space Voice". The test split sings with 53 only.
PRESETS = {"train": (52, 54, 85, 91), "test": (53,)}
# Registers (lowest, highest MIDI note of the melody): the test registers sit between the
# training ones.
REGISTERS = {"train": ((40, 54), (52, 65), (64, 76)), "test": ((46, 59), (58, 71), (70, 82))}
TICKS_PER_BEAT = 480
BEND_RATE_HZ = 100  # pitch-bend events per second while a vibrato runs
BEND_RANGE = 2      # semitones for a full pitch bend (GM default, set explicitly)


@lru_cache(maxsize=1)
def soundfont() -> str:
    for f in dpkg_files("fluid-soundfont-gm"):
        if f.endswith(".sf2") and Path(f).is_file():
            return f
    raise DataError("FluidR3_GM.sf2 not found: install fluid-soundfont-gm (make demo-data does)")


# --------------------------------------------------------------------------- MIDI files


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_file(events: list[tuple[int, bytes]]) -> bytes:
    """A format-0 standard MIDI file from ``(tick, message)`` pairs (any order; at one tick,
    note-offs first, so that one never ends a note that starts at the same tick)."""
    data, now = b"", 0
    for tick, msg in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):
        data += _vlq(tick - now) + msg
        now = tick
    data += _vlq(0) + b"\xff\x2f\x00"  # end of track
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
            + b"MTrk" + struct.pack(">I", len(data)) + data)


def _bend(channel: int, semitones: float) -> bytes:
    v = int(np.clip(round(8192 + 8191 * semitones / BEND_RANGE), 0, 16383))
    return bytes([0xE0 | channel, v & 0x7F, v >> 7])


# --------------------------------------------------------------------------- phrases


def draw_phrase(rng: np.random.Generator, split: str) -> dict:
    """A phrase: preset, register, tempo, scale, notes (per line) and expression."""
    group = "test" if split == "test" else "train"
    low, high = REGISTERS[group][int(rng.integers(len(REGISTERS[group])))]
    scale = list(SCALES)[int(rng.integers(len(SCALES)))]
    root = int(rng.integers(12))
    notes = scale_notes(root, scale, low - 12, high)  # room below for harmony lines
    top = [i for i, m in enumerate(notes) if m >= low]
    n = int(rng.integers(4, 11))
    melody = [top[0] + i for i in walk(rng, n, top)]
    lines = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    parts = [[notes[max(0, i - 2 * k)] for i in melody] for k in range(lines)]  # thirds below
    vib = rng.random() < 0.8
    return {
        "program": int(rng.choice(PRESETS[group])),
        "bpm": int(rng.integers(60, 111)),
        "beats": [float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0, 3.0])) for _ in range(n)],
        "parts": parts,
        "velocity": int(rng.integers(60, 111)),
        "vibrato_hz": float(rng.uniform(4.5, 6.5)) if vib else 0.0,
        "vibrato_semitones": float(rng.uniform(0.1, 0.6)) if vib else 0.0,
        "vibrato_onset_s": float(rng.uniform(0.1, 0.4)),
        "reverb": bool(rng.random() < 0.5),
        "gain": 0.4,
    }


def phrase_events(p: dict) -> list[tuple[int, bytes]]:
    """MIDI events of a phrase: one channel per line, legato notes, a swell on each note
    (expression), vibrato by pitch bend after an onset delay."""
    tempo = int(round(60e6 / p["bpm"]))
    ev = [(0, b"\xff\x51\x03" + tempo.to_bytes(3, "big"))]
    ticks_per_s = TICKS_PER_BEAT * p["bpm"] / 60.0
    for ch, part in enumerate(p["parts"]):
        ev += [(0, bytes([0xB0 | ch, 0, 0])), (0, bytes([0xC0 | ch, p["program"]])),
               (0, bytes([0xB0 | ch, 101, 0])), (0, bytes([0xB0 | ch, 100, 0])),   # RPN 0: bend range
               (0, bytes([0xB0 | ch, 6, BEND_RANGE])), (0, bytes([0xB0 | ch, 38, 0])),
               (0, bytes([0xB0 | ch, 10, 64 + (ch - len(p["parts"]) // 2) * 20]))]  # spread lines
        t = 0
        for i, (note, beats) in enumerate(zip(part, p["beats"])):
            dur = int(beats * TICKS_PER_BEAT)
            ev.append((t, bytes([0x90 | ch, note, p["velocity"]])))
            for k in range(5):  # swell: expression 80 -> 120 over the first part of the note
                ev.append((t + k * dur // 20, bytes([0xB0 | ch, 11, 80 + 10 * k])))
            if p["vibrato_hz"] > 0:
                start = t + int(p["vibrato_onset_s"] * ticks_per_s)
                step = max(1, int(ticks_per_s / BEND_RATE_HZ))
                for tick in range(start, t + dur, step):
                    s = (tick - start) / ticks_per_s
                    ev.append((tick, _bend(ch, p["vibrato_semitones"] * np.sin(2 * np.pi * p["vibrato_hz"] * s))))
                ev.append((t + dur, _bend(ch, 0.0)))
            # Legato: a note ends 1/16 beat after the next one starts, but not when the next one
            # repeats its pitch: that note-off (same key and channel) would end the new note too,
            # so it ends as the next one starts (midi_file writes it before that note-on).
            repeat = i + 1 < len(part) and part[i + 1] == note
            ev.append((t + dur + (0 if repeat else TICKS_PER_BEAT // 16), bytes([0x80 | ch, note, 0])))
            t += dur
    return ev


def render_phrase(cache: Path, p: dict) -> tuple[np.ndarray, int]:
    """Render (or load from the cache) a phrase: mono float32 at 44.1 kHz."""
    sf2 = soundfont()

    def render(out: Path):
        with tempfile.TemporaryDirectory(prefix="chimera-sing-") as tmp:
            mid = Path(tmp) / "phrase.mid"
            mid.write_bytes(midi_file(phrase_events(p)))
            run(["fluidsynth", "-ni", "-q", "-g", str(p["gain"]), "-r", str(RATE), "-R", str(int(p["reverb"])),
                 "-C", "0", "-F", str(out), sf2, str(mid)], "fluidsynth")

    path = cached_render(cache, [CACHE_VERSION, "fluidsynth", Path(sf2).name, p], render)
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return trim_silence(x.mean(axis=1), sr), sr
