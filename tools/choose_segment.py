"""The separation segment length, chosen on the validation split (never on a test split).

    python tools/choose_segment.py --data demo-data/musdb/valid --model runs/finetune/best.pt

Separates every validation track with the Separator's defaults but the segment length, for
each length given, and prints the median over tracks of the SI-SDR improvement per source
(whole tracks, both channels as one signal). The tracks must be longer than the segments
for the joins to count: the demo data's validation tracks are 45 s.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from chimera.audio import AudioError
from chimera.evaluate import list_tracks, read_track, track_median
from chimera.objectives import si_sdr
from chimera.pretrained import load
from chimera.separate import DEFAULT_SEGMENT, Separator


def held_out(folder: str) -> bool:
    """A held-out split's folder: MUSDB18-HQ's ``test``, the demo data's ``test-*`` and
    ``solo-*`` (tools/demodata/tracks.py, not imported: this also runs as a script)."""
    name = os.path.basename(folder)
    return name == "test" or name.startswith(("test-", "solo-"))


def validation_tracks(data: str, names: list[str]) -> list:
    """The tracks of the folder ``data``, read; a held-out split is refused (the choice must
    not see what it is then scored on), and so is a dataset's root, where chimera.evaluate
    reads the test split (MUSDB18-HQ, DSD100)."""
    folder = os.path.normpath(data)
    try:  # the real path's name: a link to a held-out split, or "." inside one, is held out too
        files = [] if held_out(os.path.realpath(folder)) else list_tracks(folder, names)
    except AudioError as exc:  # no such folder, a stem that does not fit its mixture: one line
        raise SystemExit(str(exc)) from None
    if not files or any(os.path.dirname(os.path.normpath(f.folder)) != folder for f in files):
        raise SystemExit(f"{data}: a held-out split (or a dataset's root, read as its test split): "
                         "choose on a validation folder of <track>/ folders")
    return [read_track(f) for f in files]


def improvement(estimate, reference, mixture) -> float:
    e, r, m = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64).reshape(-1))
               for a in (estimate, reference, mixture))
    return float(si_sdr(e, r) - si_sdr(m, r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a folder of <track>/{mixture,<source>...}.wav")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--segments", type=float, nargs="+", default=[10.0, DEFAULT_SEGMENT, 30.0])
    args = ap.parse_args(argv)
    model = load(args.model) if args.model else load()
    names = list(model.source_names)
    tracks = validation_tracks(args.data, names)
    print(f"{len(tracks)} tracks of {np.median([t.mixture.shape[-1] / t.rate for t in tracks]):.1f} s (median)")
    print("| segment (s) | " + " | ".join(f"{s} SI-SDRi (dB)" for s in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for seg in args.segments:
        sep = Separator(model, segment=seg, device="cpu")
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
