"""Building the data set: every split (skipped when its options did not change), then
LICENSES.md."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import numbers
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from chimera.atomic import atomic_write

from . import singing, speech
from .external import DataError
from .packages import PACKAGES, missing_packages, missing_tools, package_version
from .tracks import (HELD_OUT_SPLITS, KINDS, LATER_OPTIONS, SONG_SPLITS, WSJ_SPLITS, Options, build_song,
                     build_speaker_mix)

VERSION = 3  # bump when the same options would give other tracks
STAMP = ".complete.json"   # a finished split, with the options it was built with
BUILDING = ".building"     # a split being built (or cut short): ours to replace
MIN_SECONDS = 2.0          # a voice starts within 1.5 s and needs 0.5 s: shorter tracks may have none
# Valid and held-out material lists lost copies of training material (music, texts) in this
# revision: their splits are stamped with it so that older builds are not taken as current.
# 3: texts inside (or around) an earlier split's text, and music sharing long stretches with
# training music, left out (valid and test texts, test music: every split but train and tr).
HELD_OUT_MATERIAL = 3
# And recorded clips lost decoded copies of training clips (same samples, other Ogg bytes)
# in the next: the splits that draw clips are stamped with that too.
HELD_OUT_CLIPS = 1
# make()'s numbers: (type, lowest, highest). make() checks them and so does the command line as
# it parses them. A NaN or infinite value ended in a traceback or a split stamp that never
# matched again, a negative count in an empty split, a float count in a TypeError mid-build.
LIMITS = {**dict.fromkeys(("seed", "train", "valid", "test", "solo", "speakers"), (int, 0, math.inf)),
          "jobs": (int, 1, math.inf),
          **dict.fromkeys(("seconds", "test_seconds"), (float, MIN_SECONDS, math.inf)),
          **dict.fromkeys(("lowpass_share", "bwe_share", "sung_share", "formant_share", "second_voice_share"),
                          (float, 0.0, 1.0))}


def expected(name: str) -> str:
    """What ``name`` takes, in words (for the messages of both make() and the command line)."""
    kind, low, high = LIMITS[name]
    bounds = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
    return f"{'an integer' if kind is int else 'a finite number'} {bounds}"


def in_limits(name: str, value) -> bool:
    kind, low, high = LIMITS[name]
    # bool is an int to Python, but True tracks or jobs is a mistake
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
        return False
    return (kind is int or math.isfinite(value)) and low <= value <= high


def kinds_problem(pairs) -> str | None:
    """Why ``pairs`` are no ``train_kinds`` ((kind, weight) pairs; () for the default), or None."""
    if not isinstance(pairs, (tuple, list)) or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        return f"expected (kind, weight) pairs, got {pairs!r}"
    for kind, weight in pairs:
        if kind not in KINDS:
            return f"unknown vocal kind {kind!r} (known: {', '.join(KINDS)})"
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not (
                math.isfinite(weight) and weight >= 0):
            return f"weights are non-negative numbers, got {kind}={weight!r}"
    if pairs and sum(w for _, w in pairs) <= 0:
        return "at least one weight must be positive"
    return None


def _checked(name: str, value):
    """``value`` as a plain int or float (numpy's would not go into a JSON stamp), or a DataError."""
    if not in_limits(name, value):
        raise DataError(f"{name}: expected {expected(name)}, got {value!r}")
    return LIMITS[name][0](value)


def _job(args):
    kind, split, index, opts, out_dir, cache, seconds, music_cache = args
    if kind == "song":
        return build_song(split, index, opts, Path(out_dir), Path(cache), seconds,
                          Path(music_cache) if music_cache else None)
    return build_speaker_mix(split, index, opts, Path(out_dir), Path(cache))


def _clear_split(split_dir: Path, force: bool) -> None:
    """Remove an out-of-date split folder: only our own (stamped, or a build that was cut
    short), and a complete one only with ``force`` (it may have taken hours)."""
    if not split_dir.exists():
        return
    if (split_dir / BUILDING).exists():
        shutil.rmtree(split_dir)
    elif (split_dir / STAMP).exists():
        if not force:
            raise DataError(f"{split_dir} was built with other options: pass --force to rebuild it "
                            "(or choose another --out)")
        shutil.rmtree(split_dir)
    elif not split_dir.is_dir() or any(split_dir.iterdir()):
        raise DataError(f"{split_dir} exists but was not made by this tool (no {STAMP}): "
                        "move it away or choose another --out")


def _build_split(kind: str, split: str, count: int, seconds: float, opts: Options, out_dir: Path,
                 cache: Path, jobs: int, config: dict, progress, force: bool = False,
                 music_cache: Path | None = None) -> bool:
    """Build one split unless it already exists with the same options. Returns True if built."""
    stamp = out_dir / split / STAMP
    if count <= 0:
        return False
    if stamp.exists():
        try:  # compare as JSON (tuples come back as lists)
            if json.loads(stamp.read_text()) == json.loads(json.dumps(config)):
                return False
        except (OSError, ValueError):
            pass
    _clear_split(out_dir / split, force)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / split / BUILDING).write_text("")
    music = str(music_cache) if music_cache else None
    work = [(kind, split, i, opts, str(out_dir), str(cache), seconds, music) for i in range(count)]
    meta = []
    if jobs > 1:
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
    (out_dir / split / BUILDING).unlink()
    return True


def write_licences(out_dir: Path, doc_dir: Path = Path("/usr/share/doc")) -> Path:
    lines = [
        "# Licences of the material in this directory",
        "",
        "Generated by `python -m tools.demodata` from these Debian packages. The music is used as",
        "accompaniment (re-cut, resampled, sometimes low-pass filtered); synthetic voices are made by",
        "the speech engines from texts of the fortune packages; recorded speech is re-cut, resampled",
        "and sometimes given a synthetic high band; sung phrases are rendered by fluidsynth from",
        "the soundfont's voice presets. Full copyright files follow.",
        "",
        "| package | version | role | licence (summary) |",
        "|---|---|---|---|",
    ]
    for p in PACKAGES:
        lines.append(f"| {p.name} | {package_version(p.name)} | {p.role} | {p.licence} |")
    for p in PACKAGES:
        path = doc_dir / p.name / "copyright"
        if path.exists():
            text = path.read_text(errors="replace").rstrip()
            lines += ["", f"## {p.name}", "", f"From `{path}`:", "", "```", text, "```"]
        else:  # images that strip /usr/share/doc: say so rather than drop the package's notice
            lines += ["", f"## {p.name}", "", f"`{path}` was missing on the machine that built this data; "
                      f"the package's licence: {p.licence}. Read its copyright file before redistributing."]
    out = out_dir / "LICENSES.md"
    with atomic_write(out, force=True) as f:  # never a half-written notice
        f.write(("\n".join(lines) + "\n").encode())
    return out


def _split_config(kind: str, split: str, count: int, seconds: float, opts: Options) -> dict:
    options = {k: v for k, v in asdict(opts).items() if k not in LATER_OPTIONS or v != LATER_OPTIONS[k]}
    cfg = {"kind": kind, "count": count, "seconds": seconds, "options": options, "version": VERSION}
    if kind == "song":
        spec = SONG_SPLITS[split]
        held_out = spec.material == "test"
        group = "test" if held_out else "train"
        cfg.update(spec=asdict(spec), voices=[":".join(v) for v in speech.voices_of(held_out)],
                   presets=list(singing.PRESETS[group]), registers=[list(r) for r in singing.REGISTERS[group]])
        material_split = spec.material
        kinds = dict(opts.train_kinds) if split == "train" and opts.train_kinds else spec.kinds
        if kinds.get("sung", 0) > 0:  # the renders changed (repeated notes held): older builds are out of date
            cfg["sung_renders"] = singing.CACHE_VERSION
    else:
        material_split = WSJ_SPLITS[split][0]
        cfg["voices"] = [":".join(v) for v in speech.voices_of(material_split == "test")]
    if material_split != "train":
        cfg["held_out_material"] = HELD_OUT_MATERIAL
        if kind == "song" and "recorded" in SONG_SPLITS[split].kinds:
            cfg["held_out_clips"] = HELD_OUT_CLIPS
    return cfg


def make(out: str | os.PathLike, *, seed: int = 0, train: int = 720, valid: int = 12, test: int = 8,
         solo: int = 8, seconds: float = 20.0, test_seconds: float = 45.0,
         speakers: tuple[int, int, int] = (200, 40, 40), jobs: int = 1,
         cache: str | os.PathLike | None = None, quiet: bool = False, force: bool = False,
         **opt_kwargs) -> dict:
    """Build everything under ``out``; returns what was built and the time each split took.

    ``train`` tracks of ``seconds``; ``valid`` tracks and ``test``/``solo`` tracks per held-out
    split (``test-*``, ``solo-*``) of ``test_seconds``. A finished split built with other
    options is replaced only with ``force``."""
    # Checked before anything is made (as the command line checks them when it parses them).
    seed, train, valid, test, solo, jobs = (_checked(k, v) for k, v in (
        ("seed", seed), ("train", train), ("valid", valid), ("test", test), ("solo", solo), ("jobs", jobs)))
    seconds, test_seconds = _checked("seconds", seconds), _checked("test_seconds", test_seconds)
    if not (isinstance(speakers, (tuple, list)) and len(speakers) == 3
            and all(in_limits("speakers", n) for n in speakers)):
        raise DataError(f"speakers: expected three counts (tr, cv, tt), each {expected('speakers')}, got {speakers!r}")
    speakers = tuple(int(n) for n in speakers)
    opt_kwargs = {k: _checked(k, v) if k in LIMITS else v for k, v in opt_kwargs.items()}
    if "train_kinds" in opt_kwargs:
        problem = kinds_problem(opt_kwargs["train_kinds"])
        if problem:
            raise DataError(f"train_kinds: {problem}")
        opt_kwargs["train_kinds"] = tuple((k, float(w)) for k, w in opt_kwargs["train_kinds"])
    out = Path(out)
    # Everything cached stays inside a given --cache; the default layout (OUT/.cache/utterances
    # and OUT/.cache/music) is kept, so that older builds keep their caches.
    music_cache = Path(cache) / "music" if cache else out / ".cache" / "music"
    cache = Path(cache) if cache else out / ".cache" / "utterances"
    opts = Options(seed=seed, seconds=seconds, **opt_kwargs)
    tools = missing_tools()
    if tools:  # else a bare "No such file or directory: 'dpkg'"
        raise DataError(f"{' and '.join(tools)} not found: this tool needs a Debian-based system "
                        "(it makes the data from Debian packages)")
    missing = missing_packages()
    if missing:
        raise DataError("missing Debian packages: " + " ".join(missing)
                        + " (run `make demo-data`, or apt-get install -y them)")
    speech.check_voices()
    out.mkdir(parents=True, exist_ok=True)

    tty = sys.stderr.isatty()

    def progress(what, i, n):
        if quiet or not (tty or i == n or i % max(1, n // 5) == 0):
            return
        print(f"\r{what}: {i}/{n}" if tty else f"{what}: {i}/{n}", end="\n" if i == n or not tty else "",
              file=sys.stderr, flush=True)

    # The small evaluation splits first: they can be used while the training split builds.
    songs = [("valid", valid, test_seconds)]
    songs += [(s, solo if s.startswith("solo") else test, test_seconds) for s in HELD_OUT_SPLITS]
    songs += [("train", train, seconds)]
    work = [("song", "musdb", s, c, sec) for s, c, sec in songs]
    work += [("speakers", "wsj0-2mix", s, c, 0.0) for s, c in zip(WSJ_SPLITS, speakers)]
    t0 = time.perf_counter()
    built, timing = {}, {}
    licensed = False
    for kind, sub, split, count, sec in work:
        cfg = _split_config(kind, split, count, sec, opts)
        t = time.perf_counter()
        built[f"{sub}/{split}"] = _build_split(kind, split, count, sec, opts, out / sub, cache, jobs, cfg, progress,
                                               force, music_cache)
        timing[f"{sub}/{split}"] = round(time.perf_counter() - t, 2)
        # With the first finished split: a build that fails or is cut short later keeps its notices.
        if not licensed and (out / sub / split / STAMP).exists():
            write_licences(out)
            licensed = True
    if not licensed:
        write_licences(out)
    return {"out": str(out), "built": built, "split_seconds": timing,
            "seconds": round(time.perf_counter() - t0, 2)}
