"""The separation segment length, chosen on the validation split (never on a test split).

    python tools/choose_segment.py --data demo-data/musdb/valid --model runs/finetune/best.pt

Separates every validation track with the Separator's defaults but the segment length, for
each length given, and prints the median over tracks of the SI-SDR improvement per source
(whole tracks, both channels as one signal). The tracks must be longer than the segments
for the joins to count: the demo data's validation tracks are 45 s. A segment holds the
Separator's 1-s cross-fade twice: 2 s at least.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

from chimera.audio import AudioError
from chimera.evaluate import list_tracks, read_track, track_median
from chimera.models import CheckpointError
from chimera.objectives import si_sdr
from chimera.predict import load_model
from chimera.separate import DEFAULT_SEGMENT, Separator


# the Separator's own and lengths on either side (the default was once 20 s: "10, the
# default, 30" then ran 10 s twice)
DEFAULT_SEGMENTS = sorted({10.0, 20.0, 30.0, DEFAULT_SEGMENT})


def held_out(folder: str) -> bool:
    """A held-out split's folder: MUSDB18-HQ's ``test``, the demo data's ``test-*`` and
    ``solo-*`` (tools/demodata/tracks.py, not imported: this also runs as a script)."""
    name = os.path.basename(folder)
    return name == "test" or name.startswith(("test-", "solo-"))


def validation_files(data: str, names: list[str]) -> list:
    """The tracks of the folder ``data``, listed (their headers checked, nothing read); a
    held-out split is refused (the choice must not see what it is then scored on), and so is
    a dataset's root, where chimera.evaluate reads the test split (MUSDB18-HQ, DSD100)."""
    folder = os.path.normpath(data)
    try:  # the real path's name: a link to a held-out split, or "." inside one, is held out too
        files = [] if held_out(os.path.realpath(folder)) else list_tracks(folder, names)
    except AudioError as exc:  # no such folder, a stem that does not fit its mixture: one line
        raise SystemExit(str(exc)) from None
    if not files or any(os.path.dirname(os.path.normpath(f.folder)) != folder for f in files):
        raise SystemExit(f"{data}: a held-out split (or a dataset's root, read as its test split): "
                         "choose on a validation folder of <track>/ folders")
    return files


def read_tracks(files: list) -> list:
    """:func:`validation_files`' tracks, read; a file the headers did not give away (NaN
    samples, cut short) is one line naming it."""
    try:
        return [read_track(f) for f in files]
    except AudioError as exc:
        raise SystemExit(str(exc)) from None


def validation_tracks(data: str, names: list[str]) -> list:
    """The tracks of the folder ``data``, read (see :func:`validation_files`)."""
    return read_tracks(validation_files(data, names))


def model_or_exit(spec: str | None, tool: str):
    """The model ``--model`` names (a checkpoint, a bundled name; None: the bundled model),
    or one line naming it and what is wrong (missing, a folder, not a checkpoint)."""
    try:
        return load_model(spec)
    except (CheckpointError, ValueError) as exc:
        raise SystemExit(f"{tool}: {exc}") from None


def distinct(values: list, option: str, key=None) -> list:
    """``values`` of ``option``, each once: a value given twice is a mistake (the same row
    twice, or twice the tracks), said in one line."""
    def shown(v):
        return f"{v:g}" if isinstance(v, float) else str(v)
    seen = {}
    for v in values:
        k = key(v) if key else v
        if k in seen:
            also = f" (as {shown(seen[k])})" if shown(seen[k]) != shown(v) else ""
            raise SystemExit(f"{option}: {shown(v)} is given more than once{also}")
        seen[k] = v
    return values


def positive(what: str):
    """An argparse type: a finite number > 0, said as "a finite `what` > 0" when it is not
    (the tools' seconds, exponents and frequencies)."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and x > 0):
            raise argparse.ArgumentTypeError(f"{value!r} is not a finite {what} > 0")
        return x
    return parse


def improvement(estimate, reference, mixture) -> float:
    e, r, m = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64).reshape(-1))
               for a in (estimate, reference, mixture))
    return float(si_sdr(e, r) - si_sdr(m, r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a validation folder of <track>/{mixture,<source>...}.wav")
    ap.add_argument("--model", default=None, help="checkpoint or bundled model name (default: the bundled model)")
    ap.add_argument("--segments", type=positive("number of seconds"), nargs="+", default=DEFAULT_SEGMENTS, metavar="SECONDS",
                    help="segment lengths to compare, each 2 s at least (the Separator's 1-s cross-fade twice; "
                         f"default: {' '.join(f'{x:g}' for x in DEFAULT_SEGMENTS)}, the Separator's "
                         f"{DEFAULT_SEGMENT:g} among them)")
    args = ap.parse_args(argv)
    segments = distinct(args.segments, "--segments")
    model = model_or_exit(args.model, "choose_segment")
    names = list(model.source_names)
    # every segment length checked before any work (a bad one stopped the run after the others)
    separators = []
    for seg in segments:
        try:
            separators.append(Separator(model, segment=seg, device="cpu"))
        except ValueError as exc:
            raise SystemExit(f"choose_segment: --segments {seg:g}: {exc}") from None
    tracks = validation_tracks(args.data, names)
    print(f"{len(tracks)} tracks of {np.median([t.mixture.shape[-1] / t.rate for t in tracks]):.1f} s (median)")
    print("| segment (s) | " + " | ".join(f"{s} SI-SDRi (dB)" for s in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for seg, sep in zip(segments, separators):
        gains = {s: [] for s in names}
        for t in tracks:
            est = sep.separate(t.mixture, t.rate).numpy()  # (C, channels, L)
            for i, s in enumerate(names):
                gains[s].append(improvement(est[i], t.references[i], t.mixture))
        # a track with a silent stem has no SI-SDRi for it (NaN): left out, not the column's NaN
        print(f"| {seg:g} | " + " | ".join(f"{track_median(gains[s]):.2f}" for s in names) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
