"""python -m tools.demodata --out demo-data: see tools/demodata/__init__.py."""
from __future__ import annotations

import argparse
import os
import sys

from . import __doc__ as overview
from .build import make
from .external import DataError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demodata", description=overview.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=720, help="training tracks")
    ap.add_argument("--valid", type=int, default=12, help="validation tracks (train voices, other music/texts/clips)")
    ap.add_argument("--test", type=int, default=8, help="tracks per held-out test-* split")
    ap.add_argument("--solo", type=int, default=8, help="tracks per held-out solo-* split")
    ap.add_argument("--seconds", type=float, default=20.0, help="training track length")
    ap.add_argument("--test-seconds", type=float, default=45.0,
                    help="validation and held-out track length (longer than a segment, so joins are exercised)")
    ap.add_argument("--speakers", type=int, nargs=3, default=[200, 40, 40], metavar=("TR", "CV", "TT"),
                    help="wsj0-2mix-style examples per split (0 0 0 to skip)")
    ap.add_argument("--lowpass-share", type=float, default=0.35)
    ap.add_argument("--bwe-share", type=float, default=0.5)
    ap.add_argument("--sung-share", type=float, default=0.3)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--cache", default=None, help="utterance cache (default OUT/.cache/utterances)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        r = make(a.out, seed=a.seed, train=a.train, valid=a.valid, test=a.test, solo=a.solo, seconds=a.seconds,
                 test_seconds=a.test_seconds, speakers=tuple(a.speakers), jobs=a.jobs, cache=a.cache,
                 quiet=a.quiet, lowpass_share=a.lowpass_share, bwe_share=a.bwe_share, sung_share=a.sung_share)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = [k for k, v in r["built"].items() if v]
    print(f"demo data in {r['out']} ({r['seconds']:.1f} s; built: {', '.join(done) or 'nothing, up to date'})")
    if done:
        print("seconds per split: " + ", ".join(f"{k} {r['split_seconds'][k]:.1f}" for k in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
