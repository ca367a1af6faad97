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

Writes the per-track figures and the summary as JSON and prints the summary as a Markdown
table. Run it under /work/coord/busy or quiet: it keeps both cores busy for minutes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from chimera.atomic import atomic_write
from chimera.evaluate import find_tracks, load_track, oracle_estimates, score_track, track_median
from chimera.models import StftConfig

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
    if r.returncode != 0:
        raise SystemExit(f"eval_goals: chimera predict failed on {split_dir}: {r.stderr.strip()[-2000:]}")
    return out, time.perf_counter() - t


def read_estimates(out: Path, name: str, shape) -> np.ndarray:
    est = []
    for s in SOURCES:
        x, _ = sf.read(str(out / name / f"{s}.wav"), dtype="float32", always_2d=True)
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
    mix = track.mixture.astype(np.float64)
    e_mix = float((mix ** 2).sum())
    hi_mix = high_energy(mix, track.rate, cutoff)
    return {
        "reconstruction_db": db(float(((est.sum(0) - mix) ** 2).sum()) / e_mix),
        "high_band_share": {s: high_energy(est[i], track.rate, cutoff) / max(hi_mix, 1e-30)
                            for i, s in enumerate(SOURCES)},
        "input_energy": e_mix,
        "output_energy": {s: float((est[i].astype(np.float64) ** 2).sum()) for i, s in enumerate(SOURCES)},
    }


def median(values) -> float:
    """chimera.evaluate's median over tracks (NaN left out, -inf the lowest); None: unscored."""
    return track_median([x for x in values if x is not None])


def evaluate_split(data: Path, split: str, args, oracle_cache: dict) -> dict:
    split_dir = data / split
    names = find_tracks(str(split_dir), SOURCES)
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


def summarise(split: str, r: dict) -> dict:
    t = r["tracks"].values()
    s = {"tracks": len(r["tracks"]),
         "reconstruction_db": median(x["reconstruction_db"] for x in t),
         "reconstruction_db_worst": max(x["reconstruction_db"] for x in t),
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


def table(summary: dict) -> str:
    rows = ["| split | vocals SDR | IRM oracle | gap | accomp. SDR | IRM oracle | gap | leak | sum vs input | >8 kHz out/in |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split, s in summary.items():
        f = lambda k: f"{s[k]:.2f}" if k in s else "—"  # noqa: E731
        rows.append(f"| {split} | {f('vocals_SDR')} | {f('vocals_SDR_oracle')} | {f('vocals_gap')} | "
                    f"{f('accompaniment_SDR')} | {f('accompaniment_SDR_oracle')} | {f('accompaniment_gap')} | "
                    f"{f('leak_db')} | {s['reconstruction_db']:.1f} (worst {s['reconstruction_db_worst']:.1f}) | "
                    f"{s['high_band_sum_pct']:.1f} % |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the demo data's musdb folder (held-out splits inside)")
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--splits", nargs="+", default=[*SCORED_SPLITS, *SOLO_SPLITS])
    ap.add_argument("--predict-args", default="", help="more `chimera predict` options, one string")
    ap.add_argument("--high-hz", type=float, default=8000.0)
    ap.add_argument("--oracle-stft", default='{"sample_rate": 44100, "n_fft": 2048, "hop_length": 512, '
                                               '"window": "sqrt_hann"}', help="StftConfig of the IRM oracle (JSON)")
    ap.add_argument("--oracle-cache", default=None, help="JSON cache of oracle scores (default: beside --out)")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = Path(args.oracle_cache) if args.oracle_cache else out.parent / "oracle-cache.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except ValueError:  # cut short by an older version, which wrote it in place: recomputed
        print(f"eval_goals: {cache_path}: unreadable, the oracle scores are recomputed", file=sys.stderr)
        cache = {}
    results, summary = {}, {}
    for split in args.splits:
        if not (data / split).is_dir():
            print(f"eval_goals: {data / split}: no such split, skipped", file=sys.stderr)
            continue
        results[split] = evaluate_split(data, split, args, cache)
        summary[split] = summarise(split, results[split])
        write_json(cache_path, cache)
        print(f"{split}: done ({results[split]['predict_seconds']} s predict for "
              f"{results[split]['audio_seconds']} s of audio)", file=sys.stderr, flush=True)
    doc = {"model": args.model or "bundled", "predict_args": args.predict_args, "data": str(data),
           "high_hz": args.high_hz, "oracle_stft": json.loads(args.oracle_stft), "summary": summary,
           "results": results}
    write_json(out, doc)
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
