"""Where the material comes from, and which split each piece belongs to.

Every split here is fixed by a hash of the item's name (independent of the seed), so
held-out music, texts and recorded clips are never heard in training, whatever the seed.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import os
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from .external import DataError
from .packages import MUSIC_PACKAGES, TEXT_PACKAGES, dpkg_files

FORTUNE_DIR = Path("/usr/share/games/fortunes")
MUSIC_EXTENSIONS = (".ogg", ".opus")
MUSIC_FOLDERS = ("music", "musics")  # a path component with one of these names holds music

# Recorded human speech: the voice folders of warzone2100-data's base.wz (a zip). audio/sfx
# (effects) is left out, as are coltive/extra/multi/... (not named by issue 20).
RECORDED_FOLDERS = ("audio/memressp", "audio/tutorial", "audio/taunts", "audio/vtoltalk",
                    "audio/nexus", "audio/countdown")
# Whole speakers never heard in training: the third taunting voice and the third VTOL pilot
# (the game records each taunt and pilot line by three actors, numbered 1-3).
HELD_OUT_SPEAKERS = ("taunt3", "pilot3")


def stable_unit(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def split_by_hash(items: list, key, test: float, valid: float) -> dict[str, list]:
    """Fixed, seed-independent split: sort by a hash, take the first shares for test/valid.
    With 3 or more items a positive share gets at least one, a zero share none, and training
    keeps at least one (fewer than 3 items: all for training). Never an item in two splits."""
    order = sorted(items, key=lambda s: stable_unit(key(s)))
    n = len(order)

    def count(share: float, room: int) -> int:
        return min(max(1, round(share * n)), room) if n >= 3 and share > 0 else 0

    # Capped so that valid and train keep one each (train was given everything when nothing
    # was left: items in two splits).
    n_test = count(test, n - 1 - (valid > 0))
    n_valid = count(valid, n - 1 - n_test)
    return {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}


def drop_cross_split_duplicates(splits: dict[str, list], fingerprint) -> dict[str, list]:
    """Items whose ``fingerprint`` (content, not name) is already in an earlier split of
    train, valid, test are dropped: a copy under another name must not carry training
    material into held-out splits. Training loses nothing, so its tracks stay as they were."""
    seen: set = set()
    out = {}
    for name in ("train", "valid", "test"):
        prints = [fingerprint(x) for x in splits[name]]
        out[name] = [x for x, f in zip(splits[name], prints) if name == "train" or f not in seen]
        seen.update(prints)
    return out


def drop_contained_texts(splits: dict[str, list[str]], normalise) -> dict[str, list[str]]:
    """Valid and test texts whose ``normalise``d form is contained in, or contains, that of a
    text of an earlier split of train, valid, test are dropped (an equal one too): a quotation
    with or without its attribution or a lead-in is the same words read aloud. Training loses
    nothing. ``normalise`` must not give NUL, the separator of the joined texts."""
    earlier: list[str] = []
    out = {}
    for name in ("train", "valid", "test"):
        prints = [normalise(t) for t in splits[name]]
        if name == "train":
            out[name] = list(splits[name])
        else:
            joined_earlier = "\0".join(earlier)
            joined = "\0".join(prints)
            starts = list(itertools.accumulate((len(f) + 1 for f in prints[:-1]), initial=0))
            holds = set()  # this split's texts that hold an earlier text: every place it is found
            for f in set(earlier):
                i = joined.find(f) if f else -1
                while i >= 0:
                    holds.add(bisect.bisect_right(starts, i) - 1)
                    i = joined.find(f, i + 1)
            out[name] = [t for k, (t, f) in enumerate(zip(splits[name], prints))
                         if k not in holds and f not in joined_earlier]
        earlier += prints  # the dropped ones too: their words are in an earlier split
    return out


def _file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- music


def is_music_file(path: str) -> bool:
    parts = [p.lower() for p in Path(path).parts[:-1]]
    return path.lower().endswith(MUSIC_EXTENSIONS) and any(p in MUSIC_FOLDERS for p in parts)


# Held-out files that repeat long stretches of a training file's audio (other files, other
# bytes): found by comparing decoded music across splits (spectral-peak landmarks, then the
# waveform correlation of 2 s windows). warzone2100's track7 plays track9 for 102 s of its
# 468 s (24 s at a stretch); supertux's shallow-green is built on call_of_the_winding_path's
# loops (94 s of 256 s). Each group counts as one recording (shorter shared phrases do not).
SAME_MUSIC = (
    (("warzone2100-music", "track9.opus"), ("warzone2100-music", "track7.opus")),
    (("supertux-data", "call_of_the_winding_path.ogg"), ("supertux-data", "shallow-green.ogg")),
)


@dataclass(frozen=True)
class MusicFile:
    path: str
    package: str


@lru_cache(maxsize=1)
def music_files() -> dict[str, list[MusicFile]]:
    """Music files per split (each package split on its own so every split has each)."""
    splits: dict[str, list[MusicFile]] = {"train": [], "valid": [], "test": []}
    for pkg in MUSIC_PACKAGES:
        files = sorted(f for f in dpkg_files(pkg) if is_music_file(f) and os.path.isfile(f))
        for k, v in split_by_hash(files, lambda f: "music:" + os.path.basename(f), 0.15, 0.12).items():
            splits[k].extend(MusicFile(f, pkg) for f in v)
    # widelands' menu.ogg and ingame_14.ogg are one recording: names alone let it into valid.
    splits = drop_cross_split_duplicates(splits, _music_print)
    if not splits["train"]:
        raise DataError("no music found: install the Debian packages " + " ".join(MUSIC_PACKAGES)
                            + " (make demo-data does)")
    return splits


def _music_print(m: MusicFile) -> str:
    """What a music file is, for the cross-split check: its SAME_MUSIC group, else its bytes."""
    name = (m.package, os.path.basename(m.path))
    for group in SAME_MUSIC:
        if name in group:
            return "same:" + "/".join(group[0])
    return _file_sha1(m.path)


# --------------------------------------------------------------------------- texts


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
    # only the listed packages' files: another fortune package there would add its texts
    # (to training too) and move the hash split's boundaries
    owned = {f for pkg in TEXT_PACKAGES for f in dpkg_files(pkg)}
    files = [p for p in sorted(FORTUNE_DIR.glob("*"))
             if str(p) in owned and p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")]
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
        raise DataError(f"too few usable texts in {FORTUNE_DIR}: install fortunes-min/fortunes")
    splits = split_by_hash(sorted(texts), lambda t: "text:" + t, 0.15, 0.1)
    # The same quotation in two files may differ in punctuation or spacing only, or one file
    # may add an attribution or a lead-in ("Brooke's Law: ..."): the same words in two splits.
    return drop_contained_texts(splits, _text_fingerprint)


def _text_fingerprint(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


# --------------------------------------------------------------------------- recorded speech


@dataclass(frozen=True)
class Clip:
    name: str      # path inside base.wz
    speaker: str


def recorded_speaker(name: str) -> str:
    """Who speaks a clip: taunts/tauntN and vtoltalk's ...N.ogg are numbered actors; the other
    folders are not labelled, so each folder counts as one speaker (a guess)."""
    parts = name.split("/")
    if parts[1] == "taunts":
        return parts[2]
    if parts[1] == "vtoltalk":
        m = re.search(r"(\d)\.ogg$", name)
        return f"pilot{m.group(1)}" if m else "pilot"
    return parts[1]


@lru_cache(maxsize=1)
def _base_wz() -> str:
    for f in dpkg_files("warzone2100-data"):
        if f.endswith("/base.wz") and os.path.isfile(f):
            return f
    raise DataError("warzone2100-data's base.wz not found: install warzone2100-data (make demo-data does)")


@lru_cache(maxsize=1)
def recorded_clips() -> dict[str, list[Clip]]:
    """The recorded voice clips per split: held-out speakers whole in test, the rest by hash;
    a valid or test clip whose samples are also in an earlier split is left out."""
    with zipfile.ZipFile(_base_wz()) as z:
        names = sorted(n for n in z.namelist()
                       if n.endswith(".ogg") and n.startswith(tuple(f + "/" for f in RECORDED_FOLDERS)))
        clips = [Clip(n, recorded_speaker(n)) for n in names]
        held = [c for c in clips if c.speaker in HELD_OUT_SPEAKERS]
        rest = split_by_hash([c for c in clips if c.speaker not in HELD_OUT_SPEAKERS],
                             lambda c: "clip:" + c.name, 0.12, 0.1)
        # memressp/console and memressp/missmesg hold the same recordings as other Ogg files
        # (bytes differ, samples do not): compare what they decode to.
        return drop_cross_split_duplicates({"train": rest["train"], "valid": rest["valid"],
                                            "test": held + rest["test"]},
                                           lambda c: _decoded_sha1(z.read(c.name)))


def _decoded_sha1(data: bytes) -> str:
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return hashlib.sha1(np.ascontiguousarray(x).tobytes() + str(sr).encode()).hexdigest()


@lru_cache(maxsize=None)
def load_clip(name: str) -> tuple[np.ndarray, int]:
    """A recorded clip, mono float32 at its own rate (11025 Hz in bookworm's base.wz)."""
    with zipfile.ZipFile(_base_wz()) as z:
        data = z.read(name)
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x.mean(axis=1), sr
