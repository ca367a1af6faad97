"""Generated melodies: random walks on a scale, in MIDI note numbers."""
from __future__ import annotations

import numpy as np

SCALES = {
    "pentatonic": (0, 2, 4, 7, 9),
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
STEPS = (-2, -1, -1, 0, 1, 1, 2)  # scale steps of the walk: mostly by step, sometimes a leap


def scale_notes(root: int, scale: str, low: int, high: int) -> list[int]:
    """Every note of ``scale`` on ``root`` (pitch class) between ``low`` and ``high``."""
    degrees = SCALES[scale]
    return [m for m in range(low, high + 1) if (m - root) % 12 in degrees]


def walk(rng: np.random.Generator, n: int, notes: list[int]) -> list[int]:
    """``n`` scale positions of a random walk that starts mid-range and stays inside it
    (sounds more like a tune than independent draws). Returns indices into ``notes``."""
    pos = len(notes) // 2
    out = []
    for _ in range(n):
        pos = int(np.clip(pos + rng.choice(STEPS), 0, len(notes) - 1))
        out.append(pos)
    return out


def pentatonic_melody(rng: np.random.Generator, n: int, base_midi: int) -> list[int]:
    """``n`` notes on a pentatonic scale around ``base_midi`` (three octaves, edges avoided)."""
    notes = [base_midi + 12 * o + s for o in (-1, 0, 1) for s in SCALES["pentatonic"]]
    inner = notes[2:-2]
    return [inner[i] for i in walk(rng, n, inner)]


def note_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"
