"""Every goal figure of issue 20 for one model, on the held-out splits of the demo data.

    python tools/eval_goals.py --data demo-data/musdb --out results/bundled.json
    python tools/eval_goals.py --data demo-data/musdb --model runs/fullband/best.pt --out results/run.json
    python tools/eval_goals.py ... --predict-args "--wiener 0"        # any other `chimera predict` option

Separates through the command line (``python -m chimera predict`` on each split's mixtures,
exactly what a user runs, defaults and all), then scores the written files:

- ``test-synthetic``, ``test-real``, ``test-sung``: vocals and accompaniment SDR/SIR/SAR (BSS
  Eval v4 via museval, 1-second windows; per track the median over windows, then the median
  over tracks, as SiSEC reports) beside the full-band ideal-ratio-mask oracle (magnitude
  ratio masks on the input-rate STFT, ``--oracle-stft``, scored the same way; cached in
  ``--oracle-cache`` since it does not depend on the model);
- ``solo-instrumental``, ``solo-synthetic``, ``solo-real`` (and ``solo-sung``): the leak, the
  energy of the output that should be silent (vocals for an instrumental, accompaniment for
  a voice alone) over the input's energy, median over tracks in dB;
- on every split: the reconstruction error (sum of the outputs vs the input, dB relative to
  the input's energy, median and worst track) and the energy above ``--high-hz`` (8 kHz) in
  the outputs as a share of the input's energy above it (median, %).

Writes the per-track figures and the summary as JSON (atomically, replacing an earlier
``--out``) and prints the summary as a Markdown table. The options, the model (a two-source
vocals/accompaniment one) and every split's track list are checked before any work; splits
missing from ``--data`` are skipped, with a line saying so. Run it under /work/coord/busy or
quiet: it keeps both cores busy for minutes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from chimera.atomic import atomic_write, unwritable_folder
from chimera.audio import AudioError
from chimera.evaluate import find_tracks, load_track, oracle_estimates, score_track, track_median
from chimera.models import CheckpointError, StftConfig
from chimera.predict import load_model

SOURCES = ("vocals", "accompaniment")
SCORED_SPLITS = ("test-synthetic", "test-real", "test-sung")
SOLO_SPLITS = {"solo-instrumental": "vocals", "solo-synthetic": "accompaniment",
               "solo-real": "accompaniment", "solo-sung": "accompaniment"}  # split -> output that should be silent


def db(ratio: float) -> float:
    return float(10 * np.log10(max(ratio, 1e-30)))


def leak_db(estimates: np.ndarray, silent: int, played: np.ndarray) -> float:
    """The leak: energy of output ``silent`` of ``estimates`` (C, channels, L) over ``played``'s
    (the input), in dB; NaN (undefined, left out of medians) when ``played`` is silent."""
    played_energy = np.sum(np.square(played, dtype=np.float64))
    if played_energy == 0:
        return float("nan")
    return db(np.sum(np.square(estimates[silent], dtype=np.float64)) / played_energy)


def predict(split_dir: Path, names: list[str], work: Path, model: str | None, extra: list[str]) -> tuple[Path, float]:
    """Run ``chimera predict`` on the split's mixtures (linked under their track names, so the
    outputs land in ``out/<track>/<source>.wav``); returns the output folder and wall seconds."""
    links = work / "in"
    links.mkdir(parents=True)
    for n in names:
        (links / f"{n}.wav").symlink_to((split_dir / n / "mixture.wav").resolve())
    out = work / "out"
    cmd = [sys.executable, "-m", "chimera", "predict", *sorted(str(p) for p in links.iterdir()),
           "--out", str(out), "--float32", "--force", "--quiet", *(["--model", model] if model else []), *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:  # its error is its last line (a traceback's too)
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise SystemExit(f"eval_goals: chimera predict failed on {split_dir}: {last[-2000:]}")
    return out, time.perf_counter() - t


def read_estimates(out: Path, name: str, shape) -> np.ndarray:
    est = []
    for s in SOURCES:
        path = out / name / f"{s}.wav"
        try:
            x, _ = sf.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as exc:  # --predict-args that name or encode the outputs otherwise
            raise SystemExit(f"eval_goals: {path}: chimera predict's output cannot be read ({exc}); "
                             "--predict-args must keep the output names and format") from None
        est.append(x.T)
    est = np.stack(est)
    if est.shape != shape:
        raise SystemExit(f"eval_goals: {out / name}: outputs {est.shape}, references {shape}")
    return est


def high_energy(x: np.ndarray, rate: int, cutoff: float) -> float:
    """Energy above ``cutoff`` of ``(..., L)`` signals, summed over every leading axis."""
    spec = np.fft.rfft(x.reshape(-1, x.shape[-1]).astype(np.float64), axis=-1)
    f = np.fft.rfftfreq(x.shape[-1], 1 / rate)
    return float((np.abs(spec[:, f > cutoff]) ** 2).sum())


def band_figures(track, est: np.ndarray, cutoff: float) -> dict:
    """The reconstruction error and the outputs' share of the input's energy above `cutoff`;
    NaN (undefined, left out of the medians) where the input has no energy (above `cutoff`)."""
    mix = track.mixture.astype(np.float64)
    e_mix = float((mix ** 2).sum())
    hi_mix = high_energy(mix, track.rate, cutoff)
    return {
        "reconstruction_db": db(float(((est.sum(0) - mix) ** 2).sum()) / e_mix) if e_mix > 0 else math.nan,
        "high_band_share": {s: high_energy(est[i], track.rate, cutoff) / hi_mix if hi_mix > 0 else math.nan
                            for i, s in enumerate(SOURCES)},
        "input_energy": e_mix,
        "output_energy": {s: float((est[i].astype(np.float64) ** 2).sum()) for i, s in enumerate(SOURCES)},
    }


def median(values) -> float:
    """chimera.evaluate's median over tracks (NaN left out, -inf the lowest); None: unscored."""
    return track_median([x for x in values if x is not None])


def split_tracks(split_dir: Path) -> list[str]:
    """The track names of a split (headers checked), or one line naming what is wrong."""
    try:
        return find_tracks(str(split_dir), SOURCES)
    except AudioError as exc:
        raise SystemExit(f"eval_goals: {exc}") from None


def evaluate_split(data: Path, split: str, args, oracle_cache: dict) -> dict:
    try:
        return _evaluate_split(data, split, args, oracle_cache)
    except AudioError as exc:  # a file the headers did not give away (NaN samples, cut short)
        raise SystemExit(f"eval_goals: {exc}") from None


def _evaluate_split(data: Path, split: str, args, oracle_cache: dict) -> dict:
    split_dir = data / split
    names = split_tracks(split_dir)
    stft = StftConfig(**json.loads(args.oracle_stft))
    with tempfile.TemporaryDirectory(prefix="eval-goals-") as tmp:
        out, seconds = predict(split_dir, names, Path(tmp), args.model, shlex.split(args.predict_args))
        tracks = {}
        for name in names:
            track = load_track(str(split_dir), name, SOURCES)
            est = read_estimates(out, name, track.references.shape)
            fig = band_figures(track, est, args.high_hz)
            if split in SOLO_SPLITS:
                fig["leak_db"] = leak_db(est, SOURCES.index(SOLO_SPLITS[split]), track.mixture)
            else:
                fig["scores"] = dict(zip(SOURCES, score_track(track, est)))
                # keyed by the track's content too: a split rebuilt under the same names was
                # scored with the oracle of its old tracks
                digest = hashlib.sha1(track.mixture.tobytes())
                digest.update(track.references.tobytes())
                key = f"{split}/{name}/{args.oracle_stft}/{digest.hexdigest()[:16]}"
                if key not in oracle_cache:
                    oracle_cache[key] = dict(zip(SOURCES, score_track(track, oracle_estimates(track, "irm", stft))))
                fig["oracle_irm"] = oracle_cache[key]
            tracks[name] = fig
    return {"tracks": tracks, "predict_seconds": round(seconds, 1),
            "audio_seconds": round(sum(sf.info(str(split_dir / n / "mixture.wav")).duration for n in names), 1)}


def worst(values) -> float:
    """The largest value that is not NaN (NaN when none is)."""
    defined = [x for x in values if not math.isnan(x)]
    return max(defined) if defined else math.nan


def summarise(split: str, r: dict) -> dict:
    t = r["tracks"].values()
    s = {"tracks": len(r["tracks"]),
         "reconstruction_db": median(x["reconstruction_db"] for x in t),
         # the worst of the defined ones (max() kept or dropped a NaN by its place in the list)
         "reconstruction_db_worst": worst([x["reconstruction_db"] for x in t]),
         "high_band_pct": {src: 100 * median(x["high_band_share"][src] for x in t) for src in SOURCES},
         "high_band_sum_pct": 100 * median(sum(x["high_band_share"].values()) for x in t)}
    if split in SOLO_SPLITS:
        s["leak_db"] = median(x["leak_db"] for x in t)
    else:
        for src in SOURCES:
            for m in ("SDR", "SIR", "SAR", "SI-SDR"):
                s[f"{src}_{m}"] = median(x["scores"][src][m] for x in t)
            s[f"{src}_SDR_oracle"] = median(x["oracle_irm"][src]["SDR"] for x in t)
            s[f"{src}_gap"] = s[f"{src}_SDR_oracle"] - s[f"{src}_SDR"]
    return s


def write_json(path: Path, doc) -> None:
    """``path`` whole or not at all: an interrupted run leaves the previous file readable."""
    with atomic_write(path, force=True) as f:
        f.write(json.dumps(doc, indent=1).encode())


def table(summary: dict, high_hz: float = 8000.0) -> str:
    rows = ["| split | vocals SDR | IRM oracle | gap | accomp. SDR | IRM oracle | gap | leak | sum vs input | "
            f">{high_hz / 1000:g} kHz out/in |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split, s in summary.items():
        f = lambda k: f"{s[k]:.2f}" if k in s else "—"  # noqa: E731
        rows.append(f"| {split} | {f('vocals_SDR')} | {f('vocals_SDR_oracle')} | {f('vocals_gap')} | "
                    f"{f('accompaniment_SDR')} | {f('accompaniment_SDR_oracle')} | {f('accompaniment_gap')} | "
                    f"{f('leak_db')} | {s['reconstruction_db']:.1f} (worst {s['reconstruction_db_worst']:.1f}) | "
                    f"{s['high_band_sum_pct']:.1f} % |")
    return "\n".join(rows)


def positive_hz(text: str) -> float:
    """An argparse type: a finite frequency > 0."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite frequency > 0 (Hz)")
    return x


def check_options(args, out: Path, cache_path: Path) -> None:
    """Everything that can be checked before any work, each problem one line naming it: a
    mistake used to surface after minutes of separation, or as a traceback."""
    def fail(why):
        raise SystemExit(f"eval_goals: {why}")
    if not Path(args.data).is_dir():
        fail(f"--data {args.data}: no such folder")
    for option, path in (("--out", out), ("--oracle-cache", cache_path)):
        if path.is_dir():
            fail(f"{option} {path}: is a folder, not a file name")
        blocked = unwritable_folder(path)
        if blocked is not None:
            fail(f"{option} {path}: cannot be written ({blocked} is not a writable folder)")
    if os.path.abspath(out) == os.path.abspath(cache_path):
        fail(f"--out {out}: the oracle cache would be replaced by the results; give another --out or --oracle-cache")
    seen = set()
    for split in args.splits:
        if split in seen:
            fail(f"--splits: {split} is given more than once")
        seen.add(split)
    try:
        stft = json.loads(args.oracle_stft)
        if not isinstance(stft, dict):
            raise ValueError(f"a JSON object expected, not {stft!r}")
        StftConfig(**stft)
    except (ValueError, TypeError) as exc:
        fail(f"--oracle-stft {args.oracle_stft}: {exc}")
    try:
        shlex.split(args.predict_args)
    except ValueError as exc:
        fail(f"--predict-args {args.predict_args}: {exc}")
    try:
        model = load_model(args.model)
    except (CheckpointError, ValueError) as exc:
        fail(f"--model: {exc}")
    if sorted(model.source_names) != sorted(SOURCES):
        fail(f"--model {args.model or 'bundled'}: its sources {list(model.source_names)} are not "
             f"{' and '.join(SOURCES)}, which the figures are of")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the demo data's musdb folder (held-out splits inside)")
    ap.add_argument("--model", help="checkpoint or bundled model name (default: the bundled model)")
    ap.add_argument("--out", required=True, help="results JSON (replaced when it exists; missing folders are made)")
    ap.add_argument("--splits", nargs="+", default=[*SCORED_SPLITS, *SOLO_SPLITS],
                    help="splits of --data to evaluate: " + ", ".join(SOLO_SPLITS) + " give the leak, any other "
                         "SDR beside the oracle (default: all of these and " + ", ".join(SCORED_SPLITS)
                         + "; those missing are skipped)")
    ap.add_argument("--predict-args", default="",
                    help='more `chimera predict` options, one string ("--wiener 0"; a single option as '
                         '--predict-args=--OPTION); not those that rename or re-encode the outputs')
    ap.add_argument("--high-hz", type=positive_hz, default=8000.0,
                    help="the band whose energy the outputs should keep: above this frequency (default 8000 Hz)")
    ap.add_argument("--oracle-stft", default='{"sample_rate": 44100, "n_fft": 2048, "hop_length": 512, '
                                               '"window": "sqrt_hann"}', help="StftConfig of the IRM oracle (JSON)")
    ap.add_argument("--oracle-cache", default=None, help="JSON cache of oracle scores (default: beside --out)")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    cache_path = Path(args.oracle_cache) if args.oracle_cache else out.parent / "oracle-cache.json"
    check_options(args, out, cache_path)
    splits = []
    for split in args.splits:
        if not (data / split).is_dir():
            print(f"eval_goals: {data / split}: no such split, skipped", file=sys.stderr)
        else:
            split_tracks(data / split)  # every split's tracks listed first: a bad one is found before any work
            splits.append(split)
    if not splits:  # an empty results file, status 0, was written
        raise SystemExit(f"eval_goals: {data}: none of the splits {' '.join(args.splits)} is there")
    try:  # (the folders of --out and the cache are made when written: a failed run leaves none)
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        if not isinstance(cache, dict):
            raise ValueError(f"a JSON object expected, not a {type(cache).__name__}")
    except ValueError as exc:  # cut short by an older version, which wrote it in place: recomputed
        print(f"eval_goals: {cache_path}: unreadable ({exc}), the oracle scores are recomputed", file=sys.stderr)
        cache = {}
    results, summary = {}, {}
    for split in splits:
        results[split] = evaluate_split(data, split, args, cache)
        summary[split] = summarise(split, results[split])
        write_json(cache_path, cache)
        print(f"{split}: done ({results[split]['predict_seconds']} s predict for "
              f"{results[split]['audio_seconds']} s of audio)", file=sys.stderr, flush=True)
    doc = {"model": args.model or "bundled", "predict_args": args.predict_args, "data": str(data),
           "high_hz": args.high_hz, "oracle_stft": json.loads(args.oracle_stft), "summary": summary,
           "results": results}
    write_json(out, doc)
    print(table(summary, args.high_hz))
    return 0


if __name__ == "__main__":
    sys.exit(main())
