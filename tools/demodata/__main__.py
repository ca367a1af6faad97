"""python -m tools.demodata --out demo-data: see tools/demodata/__init__.py."""
from __future__ import annotations

import argparse
import math
import os
import sys

from . import __doc__ as overview
from .build import MIN_SECONDS, make
from .external import DataError
from .tracks import KINDS


def _kinds(text: str) -> tuple:
    """``sung=0.5,speech=0.25`` -> (("speech", 0.25), ("sung", 0.5)), kinds checked."""
    pairs = []
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind.strip() not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown vocal kind {kind.strip()!r} (known: {', '.join(KINDS)})")
        try:
            w = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=WEIGHT") from None
        if not (w >= 0 and math.isfinite(w)):
            raise argparse.ArgumentTypeError(f"{item!r}: weights are non-negative numbers")
        pairs.append((kind.strip(), w))
    if sum(w for _, w in pairs) <= 0:
        raise argparse.ArgumentTypeError("at least one weight must be positive")
    return tuple(sorted(pairs))


def _number(kind, low: float, high: float = math.inf):
    """An argparse type: a finite ``kind`` (int or float) in [low, high]. A NaN or infinite
    value would end in a traceback, or in a split stamp that never matches again."""
    bounds = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ((kind is int or math.isfinite(value)) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a finite number'} "
                                             f"{bounds}, got {text!r}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demodata", description=overview.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=_number(int, 0), default=0)
    ap.add_argument("--train", type=_number(int, 0), default=720, help="training tracks")
    ap.add_argument("--valid", type=_number(int, 0), default=12, help="validation tracks (train voices, other music/texts/clips)")
    ap.add_argument("--test", type=_number(int, 0), default=8, help="tracks per held-out test-* split")
    ap.add_argument("--solo", type=_number(int, 0), default=8, help="tracks per held-out solo-* split")
    ap.add_argument("--seconds", type=_number(float, MIN_SECONDS), default=20.0, help="training track length")
    ap.add_argument("--test-seconds", type=_number(float, MIN_SECONDS), default=45.0,
                    help="validation and held-out track length (longer than a segment, so joins are exercised)")
    ap.add_argument("--speakers", type=_number(int, 0), nargs=3, default=[200, 40, 40], metavar=("TR", "CV", "TT"),
                    help="wsj0-2mix-style examples per split (0 0 0 to skip)")
    ap.add_argument("--lowpass-share", type=_number(float, 0, 1), default=0.35)
    ap.add_argument("--bwe-share", type=_number(float, 0, 1), default=0.5)
    ap.add_argument("--sung-share", type=_number(float, 0, 1), default=0.3)
    ap.add_argument("--formant-share", type=_number(float, 0, 1), default=0.0,
                    help="share of training sung phrases and recorded clips given other formants (vowels, singers)")
    ap.add_argument("--train-kinds", type=_kinds, default=(), metavar="KIND=W,...",
                    help="weights of the vocal kinds in the train split, e.g. sung=0.5,speech=0.25,recorded=0.25 "
                         "(default: speech 0.4, recorded 0.3, sung 0.3)")
    ap.add_argument("--jobs", type=_number(int, 1), default=min(2, os.cpu_count() or 1))
    ap.add_argument("--cache", default=None, metavar="DIR",
                    help="cache of rendered utterances and sung phrases, and (in DIR/music) of music only ffmpeg "
                         "decodes: all inside DIR (default OUT/.cache/utterances, music in OUT/.cache/music)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--force", action="store_true", help="rebuild finished splits made with other options")
    a = ap.parse_args(argv)
    try:
        r = make(a.out, seed=a.seed, train=a.train, valid=a.valid, test=a.test, solo=a.solo, seconds=a.seconds,
                 test_seconds=a.test_seconds, speakers=tuple(a.speakers), jobs=a.jobs, cache=a.cache,
                 quiet=a.quiet, force=a.force, lowpass_share=a.lowpass_share, bwe_share=a.bwe_share,
                 sung_share=a.sung_share, formant_share=a.formant_share, train_kinds=a.train_kinds)
    except (DataError, OSError) as exc:  # OSError: an --out or --cache path that cannot be made
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = [k for k, v in r["built"].items() if v]
    print(f"demo data in {r['out']} ({r['seconds']:.1f} s; built: {', '.join(done) or 'nothing, up to date'})")
    if done:
        print("seconds per split: " + ", ".join(f"{k} {r['split_seconds'][k]:.1f}" for k in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
