"""python -m tools.demodata --out demo-data: see tools/demodata/__init__.py."""
from __future__ import annotations

import argparse
import os
import sys

from . import __doc__ as overview
from .build import LIMITS, expected, in_limits, kinds_problem, make
from .external import DataError
from .tracks import KINDS


def _kinds(text: str) -> tuple:
    """``sung=0.5,speech=0.25`` -> (("speech", 0.25), ("sung", 0.5)), checked as make() checks them."""
    pairs = []
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind.strip() not in KINDS:  # said before a missing weight ("choir" alone)
            raise argparse.ArgumentTypeError(f"unknown vocal kind {kind.strip()!r} (known: {', '.join(KINDS)})")
        try:
            pairs.append((kind.strip(), float(weight)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=WEIGHT") from None
    problem = kinds_problem(pairs)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return tuple(sorted(pairs))


def _number(name: str):
    """An argparse type for make()'s argument ``name``: the limits make() checks (build.LIMITS)."""
    def parse(text: str):
        try:
            value = LIMITS[name][0](text)
        except ValueError:
            value = None
        if value is None or not in_limits(name, value):
            raise argparse.ArgumentTypeError(f"expected {expected(name)}, got {text!r}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demodata", description=overview.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=_number("seed"), default=0)
    ap.add_argument("--train", type=_number("train"), default=720, help="training tracks")
    ap.add_argument("--valid", type=_number("valid"), default=12,
                    help="validation tracks (train voices, other music/texts/clips)")
    ap.add_argument("--test", type=_number("test"), default=8, help="tracks per held-out test-* split")
    ap.add_argument("--solo", type=_number("solo"), default=8, help="tracks per held-out solo-* split")
    ap.add_argument("--seconds", type=_number("seconds"), default=20.0, help="training track length")
    ap.add_argument("--test-seconds", type=_number("test_seconds"), default=45.0,
                    help="validation and held-out track length (longer than a segment, so joins are exercised)")
    ap.add_argument("--speakers", type=_number("speakers"), nargs=3, default=[200, 40, 40], metavar=("TR", "CV", "TT"),
                    help="wsj0-2mix-style examples per split (0 0 0 to skip)")
    ap.add_argument("--lowpass-share", type=_number("lowpass_share"), default=0.35)
    ap.add_argument("--bwe-share", type=_number("bwe_share"), default=0.5)
    ap.add_argument("--sung-share", type=_number("sung_share"), default=0.3)
    ap.add_argument("--formant-share", type=_number("formant_share"), default=0.0,
                    help="share of training sung phrases and recorded clips given other formants (vowels, singers)")
    ap.add_argument("--train-kinds", type=_kinds, default=(), metavar="KIND=W,...",
                    help="weights of the vocal kinds in the train split, e.g. sung=0.5,speech=0.25,recorded=0.25 "
                         "(default: speech 0.4, recorded 0.3, sung 0.3)")
    ap.add_argument("--jobs", type=_number("jobs"), default=min(2, os.cpu_count() or 1))
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
