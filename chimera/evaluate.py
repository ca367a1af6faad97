"""Score separations on a folder of tracks with BSS Eval v4 (museval) and SI-SDR.

DATA_DIR holds `<track>/mixture.wav` and one `<source>.wav` per source. SiSEC-style
aggregation: for each track and source the median over 1-second windows, then the
median over tracks. Oracle masks (`irm`, `ibm`) and the unprocessed mixture (`mixture`)
are scored the same way, computed with the model's STFT at the model's rate, so a
model's figures can be read against its representation's upper bound.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import signal
from .atomic import atomic_write
from .audio import AudioError, read_audio, resample
from .objectives import si_sdr

log = logging.getLogger(__name__)

METRICS = ("SDR", "SIR", "SAR", "ISR", "SI-SDR")
ORACLES = ("irm", "ibm", "mixture")


@dataclass
class Track:
    name: str
    mixture: np.ndarray          # (channels, L)
    references: np.ndarray       # (C, channels, L)
    rate: int


def find_tracks(data_dir, source_names):
    """The track folders of `data_dir` (sorted); AudioError for a missing folder, no tracks,
    or a track without one of the sources."""
    if not os.path.isdir(data_dir):
        raise AudioError.at(data_dir, "no such folder")
    names = sorted(d for d in os.listdir(data_dir) if os.path.isfile(os.path.join(data_dir, d, "mixture.wav")))
    if not names:
        raise AudioError.at(data_dir, "no <track>/mixture.wav inside")
    for name in names:
        missing = [s for s in source_names if not os.path.isfile(os.path.join(data_dir, name, f"{s}.wav"))]
        if missing:
            raise AudioError.at(os.path.join(data_dir, name), f"missing {', '.join(s + '.wav' for s in missing)}")
    return names


def load_track(data_dir, name, source_names):
    folder = os.path.join(data_dir, name)
    mixture, rate = read_audio(os.path.join(folder, "mixture.wav"))
    refs = []
    for s in source_names:
        path = os.path.join(folder, f"{s}.wav")
        x, r = read_audio(path)
        if r != rate or x.shape != mixture.shape:
            raise AudioError.at(path, f"{x.shape[1]} channels x {x.shape[0]} samples at {r} Hz, but the mixture "
                                      f"has {mixture.shape[1]} x {mixture.shape[0]} at {rate} Hz")
        refs.append(x.T)
    return Track(name, mixture.T, np.stack(refs), rate)


def oracle_estimates(track, kind, stft):
    """Oracle separations with the model's STFT (`stft`: a StftConfig) at its rate."""
    if kind == "mixture":
        return np.repeat(track.mixture[None], track.references.shape[0], 0)
    C, ch, L = track.references.shape
    refs = torch.from_numpy(resample(track.references, track.rate, stft.sample_rate, axis=-1)).double()
    mix = refs.sum(0)
    window = stft.window_tensor(dtype=torch.float64)
    S = signal.stft(refs, stft.n_fft, stft.hop_length, window)           # (C, ch, F, T)
    X = signal.stft(mix, stft.n_fft, stft.hop_length, window)
    mag = S.abs()
    if kind == "irm":
        masks = mag / mag.sum(0, keepdim=True).clamp_min(1e-12)
    elif kind == "ibm":
        masks = (mag == mag.amax(0, keepdim=True)).to(torch.float64)
        masks = masks / masks.sum(0, keepdim=True)  # a tie shares the bin
    else:
        raise ValueError(f"unknown oracle {kind!r}; choose one of {', '.join(ORACLES)}")
    est = signal.istft(masks * X, stft.n_fft, stft.hop_length, window, length=refs.shape[-1]).float().numpy()
    est = resample(est, stft.sample_rate, track.rate, axis=-1)
    out = np.zeros((C, ch, L), np.float32)
    n = min(L, est.shape[-1])
    out[..., :n] = est[..., :n]
    return out


def score_track(track, estimates):
    """{source index: {metric: value}}: BSS Eval v4 over 1-second windows (median over
    the windows that are defined) and SI-SDR over the whole track (mean over channels)."""
    import museval  # optional (the [eval] extra), and slow to import: only when scoring

    refs = track.references.transpose(0, 2, 1)   # (C, L, channels): museval's layout
    ests = estimates.transpose(0, 2, 1)
    sdr, isr, sir, sar = museval.evaluate(refs, ests, win=track.rate, hop=track.rate)
    si = si_sdr(torch.from_numpy(estimates), torch.from_numpy(track.references)).mean(-1).numpy()
    out = []
    for c in range(refs.shape[0]):
        out.append({"SDR": _nanmedian(sdr[c]), "SIR": _nanmedian(sir[c]), "SAR": _nanmedian(sar[c]),
                    "ISR": _nanmedian(isr[c]), "SI-SDR": float(si[c])})
    return out


def _nanmedian(x):
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def evaluate(data_dir, source_names, separate=None, oracle=None, stft=None, progress=False):
    """Score every track of `data_dir`. Either `separate` (mixture (channels, L), rate →
    (channels, C, L)) or `oracle` (with the `stft` config). Returns the results dict."""
    names = find_tracks(data_dir, source_names)
    tracks = []
    for name in tqdm(names, desc="evaluate", leave=False, disable=not progress):
        track = load_track(data_dir, name, source_names)
        if oracle is not None:
            est = oracle_estimates(track, oracle, stft)
        else:
            est = separate(track.mixture, track.rate).numpy().transpose(1, 0, 2)  # (C, channels, L)
        scores = score_track(track, est)
        tracks.append({"track": name, "scores": {s: scores[i] for i, s in enumerate(source_names)}})
        log.info("%s: %s", name, ", ".join(f"{s} SDR {scores[i]['SDR']:.2f} dB" for i, s in enumerate(source_names)))
    summary = {s: {m: _nanmedian([t["scores"][s][m] for t in tracks]) for m in METRICS} for s in source_names}
    return {"data_dir": os.fspath(data_dir), "method": oracle or "model", "sources": list(source_names),
            "aggregation": "median over 1 s windows per track, then median over tracks (SI-SDR: whole track)",
            "tracks": tracks, "summary": summary}


def summary_table(results):
    lines = [f"{'source':<16}" + "".join(f"{m:>9}" for m in METRICS)]
    for s, row in results["summary"].items():
        lines.append(f"{s:<16}" + "".join(f"{row[m]:9.2f}" for m in METRICS))
    return "\n".join(lines)


def write_results(results, json_path=None, csv_path=None):
    if json_path:
        with atomic_write(json_path, force=True) as f:
            f.write(json.dumps(_finite(results), indent=2).encode())
    if csv_path:
        rows = [["track", "source", *METRICS]]
        for t in results["tracks"]:
            for s, sc in t["scores"].items():
                rows.append([t["track"], s, *(f"{sc[m]:.4f}" for m in METRICS)])
        with atomic_write(csv_path, force=True) as f:
            text = io.StringIO()
            csv.writer(text).writerows(rows)
            f.write(text.getvalue().encode())


def _finite(obj):
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def plot_histogram(results, path, metric="SDR"):
    """Per-source histogram of the per-track `metric`, medians dashed."""
    import matplotlib  # optional (the [eval] extra), and slow to import: only for --plot
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sources = results["sources"]
    fig, axes = plt.subplots(1, len(sources), figsize=(4 * len(sources), 3), squeeze=False)
    for ax, s in zip(axes[0], sources):
        values = [t["scores"][s][metric] for t in results["tracks"] if math.isfinite(t["scores"][s][metric])]
        ax.hist(values, bins=max(5, len(values) // 2), color="tab:blue", alpha=0.8)
        med = results["summary"][s][metric]
        if math.isfinite(med):
            ax.axvline(med, color="k", linestyle="--", label=f"median {med:.2f} dB")
            ax.legend()
        ax.set_title(s)
        ax.set_xlabel(f"{metric} (dB)")
        ax.set_ylabel("tracks")
    fig.suptitle(f"{metric} per track ({results['method']})")
    fig.tight_layout()
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_write(path, force=True) as f:
        fig.savefig(f, format=ext)
    plt.close(fig)
