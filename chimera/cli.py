"""The `chimera` console script: `chimera info`, `predict`, `evaluate` and `train`.

The library reports through the ``chimera`` logger; this is where it is shown: warnings
and errors by default, progress and per-file/per-track results with ``-v``, debug
details with ``-vv``, errors only with ``--quiet``.
"""
import argparse
import ctypes
import functools
import logging
import os
import platform
import sys

import torch

import chimera
from chimera import evaluate as ev
from chimera import ops, predict, pretrained, train
from chimera.atomic import unwritable_folder
from chimera.audio import OUTPUT_FORMATS, AudioError
from chimera.models import CheckpointError
from chimera.separate import (DEFAULT_BATCH_SIZE, DEFAULT_FILENAME, DEFAULT_HIGH_BAND, DEFAULT_MISI_ITERS,
                              DEFAULT_OVERLAP, DEFAULT_SEGMENT, DEFAULT_WIENER_EXPONENT, DEFAULT_WIENER_ITERS,
                              HIGH_BAND_MODES, MAX_WIENER_CHANNELS, METHODS, Separator, parse_device)

log = logging.getLogger(__name__)


def _info(args):
    chosen = []
    if args.model is not None:  # first: a model that cannot load is one line, exit status 2, as for predict
        try:
            chosen = _model_lines(args.model, predict.load_model(args.model))
        except (CheckpointError, ValueError) as exc:
            log.error(str(exc))
            return 2
    ext = ops.extension_info()
    lines = [
        f"chimera {chimera.__version__}",
        f"torch   {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"python  {platform.python_version()} ({sys.executable})",
    ]
    if ext["loaded"]:
        build = "with CUDA kernels" if ext["with_cuda"] else "CPU kernels only"
        lines.append(f"extension chimera._C: built against torch {ext['built_against_torch']}, {build}")
        lines.append(f"  {ext['path']}")
        supported = ", ".join(ops.supported_cpu_capabilities())
        path = ops.cpu_capability()
        wanted = os.environ.get("CHIMERA_CPU_CAPABILITY", "").strip()
        how = ("the best this CPU and build run" if not wanted
               else f"chosen by CHIMERA_CPU_CAPABILITY={wanted}" if wanted.lower() == path
               else f"CHIMERA_CPU_CAPABILITY={wanted} not taken")
        lines.append(f"CPU kernels: {path} path, {how} (this CPU and build: {supported}; "
                     "CHIMERA_CPU_CAPABILITY=default|avx2|avx512 chooses)")
    else:
        lines.append(f"extension chimera._C: not in use — {ext['reason']}")
    lines.append(f"threads: {torch.get_num_threads()} (torch's intra-op threads, which the CPU kernels and the "
                 "references use; OMP_NUM_THREADS sets them)")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    lines.append("devices: " + ", ".join(devices))
    lines += chosen or _bundled_models()
    table = ops.backend()
    width = max(len(op) for op in table)
    lines.append("ops:" + " " * width + "cpu        cuda")  # over the columns below ("  " + op + "  ")
    for op, where in sorted(table.items()):
        lines.append(f"  {op:<{width}}  {where['cpu']:<9}  {where['cuda']}")
    print("\n".join(lines))
    return 0


def _bundled_models():
    """`chimera info`'s lines on each bundled model: what it separates, or why it cannot load."""
    lines = []
    for name in pretrained.MODELS:
        try:
            model = pretrained.load(name)
        except (CheckpointError, OSError) as exc:
            lines.append(f"model: {_model_label(name)}: cannot be loaded — {exc}")
            continue
        lines += _model_lines(name, model)
    return lines


def _model_label(spec):
    if spec in pretrained.MODELS:
        return f"{spec} (bundled{', the default' if spec == pretrained.DEFAULT else ''})"
    return f"{spec} (checkpoint)"


def _model_lines(spec, model):
    """What the model of --model `spec` separates, and its file."""
    size = sum(p.numel() for p in model.parameters())
    # a small model's count in millions read "0.00 M"
    count = f"{size / 1e6:.2f} M" if size >= 100_000 else f"{size:,}"
    heads = "" if model.mask_head is not None else " (no mask head: k-means)"
    path = pretrained.model_path(spec) if spec in pretrained.MODELS else os.path.abspath(spec)
    return [f"model: {_model_label(spec)}: {', '.join(model.source_names)} at {model.stft.sample_rate} Hz, "
            f"{count} parameters{heads}", f"  {path}"]


def separator_options(args):
    """The Separator's keyword arguments (but the device) from :func:`_add_separator_options`."""
    return dict(segment=args.segment, overlap=args.overlap, batch_size=args.batch_size, method=args.method,
                misi_iters=args.misi, wiener_iters=args.wiener, wiener_exponent=args.wiener_exponent,
                high_band=args.high_band)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


def return_large_blocks():
    """Have glibc give every block of 1 MiB or more back to the system when it is freed.

    Its mmap threshold otherwise rises to the largest block freed (up to 32 MiB), after
    which each segment's large tensors come from the heap, which fragments: the peak then
    grows with the file's length. `chimera predict` on stereo 44.1 kHz (2 threads, 2-core
    Intel Xeon): 4 MiB gave 391 / 418-440 / 445 MB for 1 / 10 / 60 minutes (1.14x), 1 MiB
    gives 383 / 397-407 / 407 MB (1.06x), at a median 27.5 s instead of 23.5 s for 10
    minutes (fresh pages are zeroed; benchmarks/RESULTS.md). Only for the commands (a
    library leaves the process's allocator alone); left alone when the user set
    MALLOC_MMAP_THRESHOLD_; a no-op where the C library has no mallopt."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def _init_worker(verbose, quiet):
    setup_logging(verbose, quiet)
    return_large_blocks()


def _worker_init(args):
    """What each -j worker process runs first: the same logging and heap setting as here."""
    return functools.partial(_init_worker, args.verbose, args.quiet)


def _predict(args):
    return_large_blocks()
    return predict.run(args, separator_options(args), init=_worker_init(args))


def _evaluate_outputs(args):
    """(json, csv, museval folder, plot) paths, checked before any scoring: a mistake there
    used to surface only after every track had been scored, and lose the results."""
    csv_path = args.csv or (os.path.splitext(args.out)[0] + ".csv" if args.out else None)
    museval_dir = args.museval_dir or (os.path.splitext(args.out)[0] + ".museval" if args.out else None)
    if args.out and os.path.abspath(csv_path) == os.path.abspath(args.out):
        raise ValueError(f"--out {args.out}: the per-track CSV would replace the results JSON; "
                         "name the JSON .json (the CSV goes beside it) or give --csv")
    for path in (args.out, csv_path, args.plot):
        if path and os.path.isdir(path):
            raise ValueError(f"{path}: is a folder, not a file name")
    if museval_dir and os.path.exists(museval_dir) and not os.path.isdir(museval_dir):
        raise ValueError(f"{museval_dir}: is a file, not a folder (museval's per-track files go in it)")
    for path in (args.out, csv_path, museval_dir, args.plot):
        if path:
            blocked = unwritable_folder(path)
            if blocked is not None:
                raise ValueError(f"{path}: cannot be written ({blocked} is not a writable folder)")
    if args.plot:
        ext = os.path.splitext(args.plot)[1].lstrip(".").lower()
        try:
            formats = ev.plot_formats()
        except ImportError:
            raise ValueError("--plot needs matplotlib (the [eval] extra)") from None
        if ext not in formats:
            raise ValueError(f"--plot {args.plot}: unknown image format {ext!r}; use one of "
                             f"{', '.join(sorted(formats))}")
    return args.out, csv_path, museval_dir, args.plot


def _evaluate(args):
    return_large_blocks()
    try:
        outputs = _evaluate_outputs(args)
    except ValueError as exc:
        log.error(str(exc))
        return 2
    try:  # the set-up, as predict's: exit status 2 (a model, an option, a package)
        ev.require_museval()
        model = predict.load_model(args.model)
        targets = ev.parse_targets(args.targets, list(model.source_names))
        separate = None
        if args.oracle is None:
            separate = Separator(model, device=args.device, **separator_options(args)).separate
    except (CheckpointError, ImportError, ValueError) as exc:
        log.error(str(exc))
        return 2
    try:  # the data: exit status 1
        results = ev.evaluate(args.data_dir, list(model.source_names), separate=separate, oracle=args.oracle,
                              stft=model.stft, progress=not args.quiet, split=args.split, targets=targets,
                              jobs=args.jobs, estimates_dir=args.save_estimates, force=args.force,
                              init=_worker_init(args))
    except (AudioError, ValueError) as exc:
        log.error(str(exc))
        return 1
    print(ev.summary_table(results))
    out, csv_path, museval_dir, plot = outputs
    try:
        ev.write_results(results, out, csv_path, museval_dir)
        if plot:
            ev.plot_histogram(results, plot)
    except OSError as exc:  # checked up front, yet a full disk or a file appearing meanwhile
        reason = exc.strerror or str(exc)
        log.error(f"{exc.filename or out}: cannot be written ({reason[:1].lower() + reason[1:]})")
        return 1
    for p in outputs:
        if p and not args.quiet:
            print(f"wrote {p}")
    return 0


def _add_separator_options(parser, device_note, jobs_help):
    """The options that build the Separator, shared by predict and evaluate (whose -j
    workers use the device differently: `device_note`, `jobs_help`)."""
    g = parser.add_argument_group("separation")
    g.add_argument("-n", "--model", metavar="NAME_OR_FILE",
                   help=f"a bundled model ({', '.join(pretrained.MODELS)}; default {pretrained.DEFAULT}) "
                        "or a checkpoint file")
    g.add_argument("--segment", type=float, default=DEFAULT_SEGMENT,
                   help=f"seconds per segment (default {DEFAULT_SEGMENT:g})")
    g.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                   help=f"seconds of cross-fade between segments (default {DEFAULT_OVERLAP:g}; at most half the "
                        "segment, at least one n_fft of the model: a shorter one, 0 included, is raised to that)")
    g.add_argument("-d", "--device", default="auto", type=_device,
                   help=f"auto, cpu, cuda or cuda:N (default auto: the first GPU, else cpu); {device_note}")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"segments (x channels) per forward pass (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--method", choices=METHODS,
                   help="mask head or k-means on DC embeddings (default: the mask head, k-means for a model "
                        "without one)")
    g.add_argument("--misi", type=int, default=DEFAULT_MISI_ITERS, metavar="N",
                   help=f"MISI phase-reconstruction iterations (default {DEFAULT_MISI_ITERS})")
    g.add_argument("--wiener", type=int, default=DEFAULT_WIENER_ITERS, metavar="N",
                   help=f"multichannel Wiener filter iterations across channels (default {DEFAULT_WIENER_ITERS}; "
                        f"0: off; over {MAX_WIENER_CHANNELS} channels each channel alone; on a mono file: share "
                        "each bin among the sources by magnitude, so that they add up to the input)")
    g.add_argument("--wiener-exponent", type=float, default=DEFAULT_WIENER_EXPONENT, metavar="P",
                   help="exponent of the sources' powers in that filter across channels: below 1 softer "
                        "shares, above 1 harder "
                        f"(default {DEFAULT_WIENER_EXPONENT:g})")
    g.add_argument("--high-band", choices=HIGH_BAND_MODES, default=DEFAULT_HIGH_BAND,
                   help="the band of an input above the model's Nyquist frequency (below the model's rate: "
                        "what the resampling round trip loses): split among the sources by their share of the "
                        f"model's top octave, or drop it (default {DEFAULT_HIGH_BAND})")
    g.add_argument("-j", "--jobs", type=_positive_int, default=1, metavar="N", help=f"{jobs_help} (default 1)")


def _positive_int(value):
    """A count of processes or threads: 0 or fewer used to run as 1 (or as the default)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _device(value):
    """--device checked when parsed: torch's own refusal of a name is a traceback later."""
    if value != "auto":
        try:
            parse_device(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _add_output_options(parser, quiet_help="no progress bar or summary; errors only"):
    g = parser.add_argument_group("messages")
    g.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="per-file results and tracebacks for unexpected errors; -vv: debug details")


class _Formatter(logging.Formatter):
    def format(self, record):
        text = super().format(record)
        return f"chimera: {record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging(verbose=0, quiet=False):
    """Show the ``chimera`` logger on stderr: WARNING and up, INFO with `verbose`, DEBUG
    with `verbose` >= 2, ERROR only when `quiet`. Replaces what an earlier call set up."""
    logger = logging.getLogger("chimera")
    for h in [h for h in logger.handlers if getattr(h, "_chimera_cli", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._chimera_cli = True
    handler.setFormatter(_Formatter("%(message)s"))
    level = logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    handler.setLevel(level)  # also for records of child loggers that set their own level
    logger.addHandler(handler)
    logger.setLevel(level)


def build_parser():
    parser = argparse.ArgumentParser(prog="chimera", description=chimera.__doc__)
    parser.add_argument("--version", action="version", version=f"chimera {chimera.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, extension build, CPU path and threads, the bundled models, "
                                       "the backend of each op",
                          description="Print the chimera, torch and Python versions, the extension's build, the "
                                      "CPU kernels' instruction-set path and torch's thread count, the devices "
                                      "seen, the bundled models (or the --model) and where each op runs.")
    info.add_argument("-n", "--model", metavar="NAME_OR_FILE",
                      help="describe this model instead of the bundled ones: a bundled name or a checkpoint file")
    info.set_defaults(func=_info)

    p = sub.add_parser("predict", help="separate audio files (any length, bounded memory)",
                       description="Separate each INPUT (files, or folders of audio files) into its sources. "
                                   "Under torchrun each rank separates its share of the inputs.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--out", default="separated", help="output folder (default: separated/)")
    p.add_argument("--model-subfolder", action="store_true",
                   help="put the outputs in OUT/<model name>/, like demucs' separated/<model>/")
    p.add_argument("--filename", default=DEFAULT_FILENAME,
                   help=f"output name under --out (default {DEFAULT_FILENAME}); fields {{track}} (input name "
                        "without extension), {trackext} (its extension), {stem} (source name), {ext} (output "
                        "extension), {relpath} (the input's path under the folder given, without extension)")
    p.add_argument("--output-files", nargs="+", metavar="FILE",
                   help="one input only: write its sources to these files, in the model's source order")
    p.add_argument("--format", choices=list(OUTPUT_FORMATS),
                   help="output format (default: the extension of --output-files or --filename when they all "
                        "name one format, else wav; a name of another format is refused; opus holds 8/12/16/24/48 "
                        "kHz and mp3 8 to 48 kHz: other rates are resampled to the next one up, else the highest)")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--subtype", help="libsndfile subtype (default PCM_16 for wav/flac/aiff)")
    depth.add_argument("--int24", action="store_true", help="24-bit integer output")
    depth.add_argument("--float32", action="store_true", help="32-bit float output")
    p.add_argument("--clip-mode", choices=["clamp", "none"], default="clamp",
                   help="clamp samples to [-1, 1] (default; a warning says how many were clipped) "
                        "or leave them (use with --float32: integer formats clip them anyway, and the warning says so)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_separator_options(p, "with -j or torchrun, one GPU per process",
                           "worker processes on this machine, sharing the CPU threads")
    _add_output_options(p)
    p.set_defaults(func=_predict)

    e = sub.add_parser("evaluate", help="score separations with museval (BSS Eval v4) and SI-SDR",
                       description="Separate the mixture of every track of DATA_DIR and score it against its "
                                   "stems, SiSEC style (median over 1 s windows, then over tracks). Layouts: "
                                   "DATA_DIR/<track>/{mixture,<stem>...}.wav|flac; MUSDB18-HQ "
                                   "(DATA_DIR/<train|test>/<track>/...); DSD100 (DATA_DIR/Mixtures/<Dev|Test>/"
                                   "<track>/mixture.wav, DATA_DIR/Sources/<Dev|Test>/<track>/<stem>.wav).")
    e.add_argument("data_dir", metavar="DATA_DIR")
    e.add_argument("--split", help="MUSDB18-HQ: train or test (default test); DSD100: Dev or Test (default Test)")
    e.add_argument("--targets", action="append", metavar="SOURCE=SPEC",
                   help="reference of a model source: stems summed (accompaniment=drums+bass+other) or the "
                        "mixture minus stems (accompaniment=mixture-vocals); repeatable. Default: the stem of "
                        "the source's name; a source without one is the mixture minus the others")
    e.add_argument("--out", help="results JSON (a CSV and a museval folder of the same name are written beside it)")
    e.add_argument("--csv", help="per-track CSV (default: beside --out)")
    e.add_argument("--museval-dir", help="museval's per-track JSON (DIR/<subset>/<track>.json, as museval's "
                                         "eval_mus_track writes it; default: beside --out)")
    e.add_argument("--save-estimates", metavar="DIR", help="write each track's estimates to DIR/<track>/<source>.wav")
    e.add_argument("--force", action="store_true", help="overwrite existing estimates")
    e.add_argument("--plot", help="per-track SDR histogram per source (PNG/PDF/SVG)")
    e.add_argument("--oracle", choices=ev.ORACLES, help="score oracle masks, or the unprocessed mixture")
    _add_separator_options(e, "with -j every worker runs its own copy of the model on this one device",
                           "score N tracks at once in worker processes (at most one per track), sharing the "
                           "CPU threads and the -d device")
    _add_output_options(e, "no progress bar or list of files written; the results table and errors only")
    e.set_defaults(func=_evaluate)

    t = sub.add_parser("train", help="train a model from a TOML recipe (staged, resumable, DDP)",
                       description="Train a separation model from a recipe (see recipes/).")
    t.add_argument("config", nargs="?", metavar="CONFIG", help="TOML recipe (optional with --resume)")
    t.add_argument("--run-dir", help="folder for checkpoints and metrics (default runs/<config name>; with "
                                      "--resume and no CONFIG, the current folder)")
    t.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue from RUN_DIR/last.pt (or the given checkpoint)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. stages.0.epochs=2 (repeatable)")
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the recipe's train.device); under "
                                    "torchrun each process takes the GPU of its LOCAL_RANK (cuda:N is refused there)")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads (default: the recipe's train.threads; 0 there: torch's default)")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(func=train.main)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:  # what was being written vanishes (chimera.atomic); no traceback
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
