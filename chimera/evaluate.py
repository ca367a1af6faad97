"""Score separations on a folder of tracks with BSS Eval v4 (museval) and SI-SDR.

Layouts (:func:`list_tracks`): ``DATA_DIR/<track>/{mixture,<stem>...}`` (ours, one split of
MUSDB18-HQ); MUSDB18-HQ's root ``DATA_DIR/<train|test>/<track>/`` (``split``, default test);
DSD100's ``DATA_DIR/Mixtures/<Dev|Test>/<track>/mixture`` and
``DATA_DIR/Sources/<Dev|Test>/<track>/<stem>`` (default Test); wav or flac. A model source's
reference is the stem of its name, or a sum of stems, or the mixture minus stems
(``--targets accompaniment=drums+bass+other``, ``accompaniment=mixture-vocals``); a single
source without a stem of its name is the mixture minus the others.

SiSEC-style aggregation: for each track and source the median over 1-second windows, then
the median over tracks. Oracle masks (`irm`, `ibm`) and the unprocessed mixture (`mixture`)
are scored the same way, computed with the model's STFT at the model's rate, so a model's
figures can be read against its representation's upper bound. Tracks can be scored in
parallel worker processes (``jobs``); the per-window scores can be written in museval's own
per-track JSON layout (:func:`write_museval`), which ``museval.EvalStore`` reads.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from . import _deps, signal
from .atomic import atomic_write, atomic_writes, unwritable_folder
from .audio import AudioError, audio_info, read_audio, resample
from .objectives import si_sdr
from .parallel import process_pool, signals_deferred

log = logging.getLogger(__name__)

METRICS = ("SDR", "SIR", "SAR", "ISR", "SI-SDR")
BSS_METRICS = ("SDR", "SIR", "SAR", "ISR")
ORACLES = ("irm", "ibm", "mixture")
EXTENSIONS = (".wav", ".flac")
#: museval's subset folder for a split name (MUSDB18 train/test are DSD100's Dev/Test).
SUBSETS = {"train": "train", "test": "test", "Dev": "train", "Test": "test"}


def require_museval():
    """museval, or an ImportError saying how to install it, before any work."""
    return _deps.require("eval", "museval", "chimera evaluate")


@dataclass
class Track:
    name: str
    mixture: np.ndarray          # (channels, L)
    references: np.ndarray       # (C, channels, L)
    rate: int


@dataclass(frozen=True)
class Target:
    """A source's reference: the sum of `stems`, or the mixture minus them (`from_mixture`)."""
    stems: tuple
    from_mixture: bool = False

    def __str__(self):
        return "mixture-" + "-".join(self.stems) if self.from_mixture else "+".join(self.stems)


@dataclass
class TrackFiles:
    name: str
    folder: str                  # the track's folder, named by error messages
    mixture: str
    stems: dict                  # stem name -> file
    subset: str = "test"         # museval's subset folder
    targets: dict = field(default_factory=dict)   # source name -> Target


def parse_targets(specs, source_names):
    """``["accompaniment=drums+bass+other", "vocals=mixture-accompaniment"]`` -> {source: Target}."""
    out = {}
    for spec in specs or ():
        name, sep, rhs = spec.partition("=")
        name, rhs = name.strip(), rhs.strip()
        from_mixture = rhs.startswith("mixture-")
        stems = tuple(s.strip() for s in (rhs[len("mixture-"):].split("-") if from_mixture else rhs.split("+")))
        if not sep or not name or not all(stems):
            raise ValueError(f"--targets {spec!r}: expected SOURCE=STEM+STEM... or SOURCE=mixture-STEM-...")
        if name not in source_names:
            raise ValueError(f"--targets {spec!r}: the model has no source {name!r} ({', '.join(source_names)})")
        if name in out:  # the last one silently won
            raise ValueError(f"--targets {spec!r}: {name} is defined twice")
        out[name] = Target(stems, from_mixture)
    return out


def _audio_file(folder, stem):
    """folder/stem.wav or .flac (the first that exists; .wav when neither does)."""
    paths = [os.path.join(folder, stem + e) for e in EXTENSIONS]
    return next((p for p in paths if os.path.isfile(p)), paths[0])


def _audio_files(folder):
    """{name: [paths]} of the wav and flac files of `folder` (a name with two: stem.wav and stem.flac)."""
    found = {}
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        stem, ext = os.path.splitext(f)
        path = os.path.join(folder, f)
        if ext.lower() in EXTENSIONS and os.path.isfile(path):
            found.setdefault(stem, []).append(path)
    return found


def _stems(folder, mixture):
    return {stem: paths[0] for stem, paths in _audio_files(folder).items() if mixture not in paths}


def _track_files(name, folder, mixture, split):
    """The TrackFiles of one track; AudioError for a stem or mixture in two files (which one
    is the reference? mixture.wav was read beside vocals.flac of the same folder)."""
    for f in {folder, os.path.dirname(mixture)}:
        for stem, paths in _audio_files(f).items():
            if len(paths) > 1 and (stem == "mixture" or f == folder):
                raise AudioError.at(paths[0], f"{stem} is also in {os.path.basename(paths[1])}: "
                                              "keep one file per stem")
    return TrackFiles(name, folder, mixture, _stems(folder, mixture), SUBSETS.get(split, "test"))


def _has_mixture(folder):
    return any(os.path.isfile(os.path.join(folder, "mixture" + e)) for e in EXTENSIONS)


def _flat_track(base, name):
    folder = os.path.join(base, name)
    mixture = _audio_file(folder, "mixture")
    split = os.path.basename(os.path.normpath(base))
    return _track_files(name, folder, mixture, split)


def _find_files(data_dir, split=None):
    """The TrackFiles of `data_dir` in one of the layouts of the module docstring (sorted)."""
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise AudioError.at(data_dir, "no such folder")
    mixtures, sources = os.path.join(data_dir, "Mixtures"), os.path.join(data_dir, "Sources")
    if os.path.isdir(mixtures) and os.path.isdir(sources):  # DSD100
        split = split or "Test"
        src = os.path.join(sources, split)
        if not os.path.isdir(src):
            raise AudioError.at(src, "no such folder (DSD100 splits: Dev, Test)")
        mix = os.path.join(mixtures, split)
        # a track with its mixture or its stems only is not scored: said, as in the flat layout
        # (a mixture without stems was passed over silently, stems without a mixture stopped the run)
        names = {d for f in (src, mix) if os.path.isdir(f)  # (hidden folders, .git say, are no tracks)
                 for d in os.listdir(f) if os.path.isdir(os.path.join(f, d)) and not d.startswith(".")}
        out = []
        for name in sorted(names):
            folder, mixture = os.path.join(src, name), _audio_file(os.path.join(mix, name), "mixture")
            if not os.path.isdir(folder):
                log.warning("%s: no stems folder %s: not scored", os.path.join(mix, name), folder)
            elif not os.path.isfile(mixture):
                log.warning("%s: no mixture.wav or mixture.flac: not scored", os.path.join(mix, name))
            else:
                out.append(_track_files(name, folder, mixture, split))
        if not out:
            raise AudioError.at(src, "no track folders inside")
        return out
    base = os.path.join(data_dir, split) if split else data_dir

    def track_names(folder):
        return sorted(d for d in os.listdir(folder) if _has_mixture(os.path.join(folder, d))) \
            if os.path.isdir(folder) else []

    names = track_names(base)
    if not names and not split and track_names(os.path.join(data_dir, "test")):  # MUSDB18-HQ's root
        base = os.path.join(data_dir, "test")
        log.info("%s: MUSDB18-HQ layout, scoring its test split (--split train for the other)", data_dir)
        names = track_names(base)
    if not names:
        raise AudioError.at(base, "no <track>/mixture.wav or mixture.flac inside (MUSDB18-HQ: DATA_DIR/<split>/"
                                  "<track>/; DSD100: DATA_DIR/Mixtures and DATA_DIR/Sources)")
    # a track folder without its mixture is not scored: say so, not silently (after the
    # root's test split is found: its tracks were passed over without a word)
    for d in sorted(os.listdir(base)):
        if d not in names and not d.startswith(".") and os.path.isdir(os.path.join(base, d)) \
                and _stems(os.path.join(base, d), None):
            log.warning("%s: no mixture.wav or mixture.flac: not scored", os.path.join(base, d))
    return [_flat_track(base, n) for n in names]


def resolve_targets(files, source_names, explicit=None):
    """{source: Target} for the track `files`: `explicit` ones, else the stem of the source's
    name, else (one source only) the mixture minus the others. AudioError naming the track
    folder and what is missing otherwise."""
    explicit = explicit or {}
    targets, missing = {}, []
    for s in source_names:
        if s in explicit:
            absent = [m for m in explicit[s].stems if m not in files.stems]
            if absent:
                raise AudioError.at(files.folder, f"--targets {s}={explicit[s]}: no stem {', '.join(absent)} "
                                                  f"(stems: {', '.join(files.stems) or 'none'})")
            targets[s] = explicit[s]
        elif s in files.stems:
            targets[s] = Target((s,))
        else:
            missing.append(s)
    others = [t for t in targets.values() if not t.from_mixture]
    if len(missing) == 1 and targets and len(others) == len(targets):
        targets[missing[0]] = Target(tuple(m for t in others for m in t.stems), from_mixture=True)
    elif missing:
        ext = os.path.splitext(files.mixture)[1]
        raise AudioError.at(files.folder, f"missing {', '.join(s + ext for s in missing)} (stems: "
                                          f"{', '.join(files.stems) or 'none'}; --targets SOURCE=STEM+STEM or "
                                          "SOURCE=mixture-STEM defines a source from them)")
    return {s: targets[s] for s in source_names}


def list_tracks(data_dir, source_names, split=None, targets=None):
    """Every track of `data_dir` (any layout of the module docstring) with the Targets of
    the model's sources resolved; AudioError before any work for a track that lacks one."""
    explicit = targets if isinstance(targets, dict) else parse_targets(targets, source_names)
    tracks = _find_files(data_dir, split)
    for t in tracks:
        t.targets = resolve_targets(t, source_names, explicit)
        _check_headers(t)
    derived = [", ".join(f"{s} = {tg}" for s, tg in t.targets.items() if tg != Target((s,))) for t in tracks]
    if len(set(derived)) == 1:
        if derived[0]:
            log.info("references: %s", derived[0])
    else:  # tracks may differ (one has a vocals stem, another's vocals are the mixture minus the rest)
        for t, d in zip(tracks, derived):
            if d:
                log.info("%s: references: %s", t.name, d)
    return tracks


def find_tracks(data_dir, source_names):
    """The names of the tracks of `data_dir` (sorted); see :func:`list_tracks`."""
    return [t.name for t in list_tracks(data_dir, source_names)]


def _mismatch(path, channels, frames, rate, mixture) -> AudioError:
    """A stem that does not fit the mixture ((channels, frames, rate) of each)."""
    return AudioError.at(path, f"{channels} channels x {frames} samples at {rate} Hz, but the mixture has "
                               f"{mixture[0]} x {mixture[1]} at {mixture[2]} Hz")


def _check_headers(files: TrackFiles) -> None:
    """The stems a track's references use fit its mixture (from the file headers, before any
    work: a bad stem found while scoring left the earlier tracks' estimates written)."""
    mix = audio_info(files.mixture)
    want = (mix.channels, mix.frames, mix.sample_rate)
    for name in sorted({m for t in files.targets.values() for m in t.stems}):
        info = audio_info(files.stems[name])
        if (info.channels, info.frames, info.sample_rate) != want:
            raise _mismatch(info.path, info.channels, info.frames, info.sample_rate, want)


def read_track(files: TrackFiles) -> Track:
    """Read the mixture and build each source's reference from the stems (:class:`Target`)."""
    mixture, rate = read_audio(files.mixture)
    cache = {}

    def stem(name):
        if name not in cache:
            path = files.stems[name]
            x, r = read_audio(path)
            if r != rate or x.shape != mixture.shape:
                raise _mismatch(path, x.shape[1], x.shape[0], r, (mixture.shape[1], mixture.shape[0], rate))
            cache[name] = x
        return cache[name]

    refs = []
    for target in files.targets.values():
        total = sum(stem(m) for m in target.stems)
        refs.append((mixture - total if target.from_mixture else total).T)
    return Track(files.name, mixture.T, np.stack(refs).astype(np.float32), rate)


def load_track(data_dir, name, source_names, targets=None):
    """The track folder `data_dir/name` of the flat layout, read (see :func:`read_track`)."""
    files = _flat_track(os.fspath(data_dir), name)
    files.targets = resolve_targets(files, source_names, parse_targets(targets, source_names))
    return read_track(files)


def oracle_estimates(track, kind, stft):
    """Oracle separations with the model's STFT (`stft`: a StftConfig) at its rate."""
    if kind == "mixture":
        return np.repeat(track.mixture[None], track.references.shape[0], 0)
    C, ch, L = track.references.shape
    refs = torch.from_numpy(resample(track.references, track.rate, stft.sample_rate, axis=-1)).double()
    # the masks go on the mixture, which the references need not add up to (--targets
    # naming some stems only): on their sum the "upper bound" was overstated
    mix = torch.from_numpy(resample(track.mixture, track.rate, stft.sample_rate, axis=-1)).double()
    n = min(mix.shape[-1], refs.shape[-1])
    refs, mix = refs[..., :n], mix[..., :n]
    # a track shorter than the window: zeros after it, cut off below (the STFT refused it, in
    # an error naming no track; the model's separation pads such a track too)
    pad = max(0, stft.n_fft - n)
    refs, mix = torch.nn.functional.pad(refs, (0, pad)), torch.nn.functional.pad(mix, (0, pad))
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


def bss_eval(track, estimates):
    """BSS Eval v4 over 1-second windows: {metric: (C, windows) array}, museval's values."""
    museval = require_museval()  # optional (the [eval] extra), and slow to import: only when scoring
    refs = track.references.transpose(0, 2, 1)   # (C, L, channels): museval's layout
    ests = estimates.transpose(0, 2, 1)
    sdr, isr, sir, sar = museval.evaluate(refs, ests, win=track.rate, hop=track.rate)
    return {"SDR": sdr, "SIR": sir, "SAR": sar, "ISR": isr}


def score_track(track, estimates, windows=None):
    """[{metric: value}] per source: BSS Eval v4 over 1-second windows (median over the
    windows that are defined) and SI-SDR over the whole track (mean over channels).
    `windows`: the :func:`bss_eval` result when already computed."""
    windows = bss_eval(track, estimates) if windows is None else windows
    per_channel = si_sdr(torch.from_numpy(estimates), torch.from_numpy(track.references))   # (C, channels)
    # a channel where the reference is silent (a hard-panned source) has no SI-SDR (-inf):
    # the mean is over the channels where it sounds (none: NaN, a silent source)
    sounds = torch.from_numpy(np.any(track.references != 0, axis=-1))
    si = (torch.where(sounds, per_channel, 0.0).sum(-1) / sounds.sum(-1)).numpy()
    return [{**{m: _nanmedian(windows[m][c]) for m in BSS_METRICS}, "SI-SDR": float(si[c])}
            for c in range(track.references.shape[0])]


def _nanmedian(x):
    """The median over 1 s windows of those that are defined (museval's: its files hold
    +-inf as NaN, and its aggregation leaves NaN out)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def track_median(x):
    """The median over tracks: NaN (undefined, a silent reference) left out, -inf (a silent
    estimate's SI-SDR: nothing recovered) kept as the lowest score; left out, it raised the
    median as if the track had not been scored."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else float("nan")


def estimate_paths(estimates_dir, track, source_names):
    return [os.path.join(estimates_dir, track, f"{s}.wav") for s in source_names]


def _museval_silent(x):
    """museval's test of a source it refuses (x: (channels, L)): the sum over channels is 0 at
    every sample (silence, or a stem whose channels cancel, L = -R)."""
    return not np.any(np.sum(x, axis=0, dtype=np.float64) != 0)


def _evaluate_track(files, source_names, separate, oracle, stft, estimates_dir, force):
    """One track's result entry (scores, per-window values), its estimates saved if asked."""
    track = read_track(files)
    if oracle is not None:
        est = oracle_estimates(track, oracle, stft)
    else:
        est = separate(track.mixture, track.rate).numpy()  # (C, channels, L)
    for s, x in zip(source_names, est):  # a diverged model: its scores were null, as a silent source's
        if not np.isfinite(x).all():
            raise ValueError(f"{files.folder}: the {s} estimate holds NaN/Inf samples (the model's output)")
    if estimates_dir:
        with atomic_writes(estimate_paths(estimates_dir, files.name, source_names), force=force) as outs:
            for f, x in zip(outs, est):  # one track's estimates placed together or not at all
                with signals_deferred():  # soundfile writes f through Python callbacks
                    sf.write(f, x.T, track.rate, format="WAV", subtype="FLOAT")
    silent = [s for s, ref in zip(source_names, track.references) if _museval_silent(ref)]
    silent_est = [s for s, x in zip(source_names, est) if _museval_silent(x)]
    if silent or silent_est:
        # BSS Eval needs every reference and estimate to sound (museval refuses the track
        # otherwise): an instrumental's silent vocals leave its BSS Eval figures undefined,
        # not the run.
        windows = {m: np.full((len(source_names), 0), np.nan) for m in BSS_METRICS}
    else:
        windows = bss_eval(track, est)
    scores = score_track(track, est, windows)  # SI-SDR: NaN for an all-silent reference
    return {"track": files.name, "subset": files.subset,
            "references": {s: str(files.targets[s]) for s in source_names},
            "silent": silent, "silent_estimates": silent_est,
            "scores": dict(zip(source_names, scores)),
            "windows": {s: {m: windows[m][c].tolist() for m in BSS_METRICS} for c, s in enumerate(source_names)}}


_worker_task = None  # a -j worker's _evaluate_track with everything but the track bound


def _start_worker(task, init):
    global _worker_task
    _worker_task = task
    if init is not None:
        init()


def _evaluate_in_worker(files):
    return _worker_task(files)


def evaluate(data_dir, source_names, separate=None, oracle=None, stft=None, progress=False, split=None,
             targets=None, jobs=1, estimates_dir=None, force=False, init=None):
    """Score every track of `data_dir` (:func:`list_tracks`: `split`, `targets`). Either
    `separate` (mixture (channels, L), rate → (C, channels, L)) or `oracle` (with the
    `stft` config). `jobs` > 1: tracks in that many worker processes (`separate` must then
    be picklable, e.g. a Separator's method; `init` runs first in each). `estimates_dir`:
    each track's estimates written to ``<dir>/<track>/<source>.wav`` (float32), existing
    ones kept unless `force` (checked before any work). Returns the results dict: each
    track's entry names its sources' references (``"references"``, tracks may differ); the
    top-level ``"references"`` gives a source's once, null where the tracks differ."""
    if jobs < 1:  # 0 or fewer ran as 1
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    tracks = list_tracks(data_dir, source_names, split, targets)
    jobs = min(jobs, len(tracks))  # a worker without a track would only load the model
    if estimates_dir:
        for t in tracks:
            for p in estimate_paths(estimates_dir, t.name, source_names):
                if os.path.exists(p) and not force:
                    raise AudioError.at(p, "exists (use --force to overwrite)")
                # a file in the way of the folder was a traceback once the first track was separated
                blocked = unwritable_folder(p)
                if blocked is not None:
                    raise AudioError.at(p, f"cannot be written ({blocked} is not a writable folder)")
    task = functools.partial(_evaluate_track, source_names=list(source_names), separate=separate, oracle=oracle,
                             stft=stft, estimates_dir=estimates_dir, force=force)
    bar = tqdm(total=len(tracks), desc="evaluate", leave=False, disable=not progress)
    results = []
    with bar, (process_pool(jobs, functools.partial(_start_worker, task, init)) if jobs > 1 else contextlib.nullcontext()) as pool:
        done = pool.imap(_evaluate_in_worker, tracks) if pool is not None else map(task, tracks)
        for entry in done:
            results.append(entry)
            bar.update()
            log.info("%s: %s", entry["track"],
                     ", ".join(f"{s} SDR {entry['scores'][s]['SDR']:.2f} dB" for s in source_names))
    for entry in results:  # said once the progress bar has cleared its line
        if entry["silent"]:
            silent = " and ".join(entry["silent"])
            log.warning("%s: %s silent: BSS Eval cannot score the track, its SDR/SIR/SAR/ISR (and the SI-SDR of "
                        "%s) are left out of the medians and of the museval folder", entry["track"], silent, silent)
        elif entry.get("silent_estimates"):
            log.warning("%s: the %s estimate is silent: BSS Eval cannot score the track, its SDR/SIR/SAR/ISR are "
                        "left out of the medians and of the museval folder (an SI-SDR of -inf, nothing recovered, "
                        "counts as the lowest)", entry["track"], " and ".join(entry["silent_estimates"]))
    summary = {s: {m: track_median([t["scores"][s][m] for t in results]) for m in METRICS} for s in source_names}
    return {"data_dir": os.fspath(data_dir), "method": oracle or "model", "sources": list(source_names),
            # once per source where every track agrees, null where they differ (each track has its own)
            "references": {s: results[0]["references"][s] if len({t["references"][s] for t in results}) == 1
                           else None for s in source_names},
            "aggregation": "median over 1 s windows per track, then median over tracks (SI-SDR: whole track)",
            "tracks": results, "summary": summary}


def summary_table(results):
    lines = [f"{'source':<16}" + "".join(f"{m:>9}" for m in METRICS)]
    for s, row in results["summary"].items():
        lines.append(f"{s:<16}" + "".join(f"{row[m]:9.2f}" for m in METRICS))
    return "\n".join(lines)


def write_results(results, json_path=None, csv_path=None, museval_dir=None):
    """Our JSON (per-track medians, summary) and CSV, and museval's per-track JSON."""
    if json_path:
        ours = {**results, "tracks": [{k: v for k, v in t.items() if k != "windows"} for t in results["tracks"]]}
        with atomic_write(json_path, force=True) as f:
            f.write(json.dumps(_finite(ours), indent=2).encode())
    if csv_path:
        rows = [["track", "source", *METRICS, "reference"]]
        for t in results["tracks"]:
            for s, sc in t["scores"].items():
                rows.append([t["track"], s, *(f"{sc[m]:.4f}" for m in METRICS), t.get("references", {}).get(s, "")])
        with atomic_write(csv_path, force=True) as f:
            text = io.StringIO()
            csv.writer(text).writerows(rows)
            f.write(text.getvalue().encode())
    if museval_dir:
        write_museval(results, museval_dir)


def write_museval(results, folder):
    """Each track's per-window scores as museval writes them (``museval.TrackStore``'s JSON in
    ``folder/<subset>/<track>.json``, as ``museval.eval_mus_track(output_dir=folder)`` does),
    so ``museval.EvalStore().add_eval_dir(folder)`` and museval's tools read them."""
    museval = require_museval()
    for t in results["tracks"]:
        if t.get("silent") or t.get("silent_estimates"):
            # no window was scored (museval's readers refuse an empty track): no file, and
            # none left from an earlier run to contradict this one
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, t["subset"], f"{t['track']}.json"))
            continue
        store = museval.TrackStore(t["track"], win=1.0, hop=1.0)
        for s in results["sources"]:
            store.add_target(s, t["windows"][s])
        with atomic_write(os.path.join(folder, t["subset"], f"{t['track']}.json"), force=True) as f:
            f.write(store.json.encode())


def _finite(obj):
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def plot_formats():
    """The image formats --plot can write (matplotlib's, by file extension)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional (the [eval] extra)
    from matplotlib.figure import Figure
    return set(FigureCanvasAgg(Figure()).get_supported_filetypes())


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
