"""The `chimera` console script: `chimera info`, `predict`, `evaluate` and `train`.

The library reports through the ``chimera`` logger; this is where it is shown: warnings
and errors by default, progress and per-file/per-track results with ``-v``, debug
details with ``-vv``, errors only with ``--quiet``.
"""
import argparse
import logging
import os
import platform
import sys
import traceback

import torch

import chimera
from chimera import evaluate as ev
from chimera import ops, train
from chimera.audio import AUDIO_EXTENSIONS, AudioError
from chimera.models import CheckpointError, load_checkpoint
from chimera.pretrained import default_model_path
from chimera.separate import DEFAULT_SEGMENT, METHODS, Separator

log = logging.getLogger(__name__)

# Multichannel Wiener iterations by default (chimera.wiener; 0 = per-channel masks only): one
# iteration gains 0.5 dB vocals SDR on the bundled model's held-out test (model card).
WIENER_DEFAULT = 1


def _info(args):
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
        lines.append(f"CPU kernels: {ops.cpu_capability()} path (this CPU and build: {supported}; "
                     "CHIMERA_CPU_CAPABILITY=default|avx2|avx512 chooses)")
    else:
        lines.append(f"extension chimera._C: not in use — {ext['reason']}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    lines.append("devices: " + ", ".join(devices))
    table = ops.backend()
    width = max(len(op) for op in table)
    lines.append("ops:" + " " * (width - 1) + "cpu        cuda")
    for op, where in sorted(table.items()):
        lines.append(f"  {op:<{width}}  {where['cpu']:<9}  {where['cuda']}")
    print("\n".join(lines))
    return 0


def _collect_inputs(paths):
    """Files as given; folders: every audio file inside (recursively, sorted)."""
    found, problems = [], []
    for p in paths:
        if os.path.isdir(p):
            inside = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                            if f.lower().endswith(AUDIO_EXTENSIONS))
            if not inside:
                problems.append(f"{p}: folder contains no audio files")
            found += inside
        else:
            found.append(p)
    return found, problems


def _model(args):
    """The model of --model (default: the bundled one)."""
    model, _ = load_checkpoint(args.model or default_model_path())
    return model


def _separator(model, args):
    """A Separator built from the options of :func:`_add_separator_options`."""
    return Separator(model, segment=args.segment, overlap=args.overlap, device=args.device,
                     batch_size=args.batch_size, method=args.method, misi_iters=args.misi,
                     wiener_iters=args.wiener)


def _predict(args):
    inputs, problems = _collect_inputs(args.inputs)
    for p in problems:
        log.error(p)
    if args.output_files is not None and len(inputs) != 1:
        log.error(f"--output-files needs exactly one input, got {len(inputs)}")
        return 2
    subtype = "PCM_24" if args.int24 else "FLOAT" if args.float32 else args.subtype
    try:
        separator = _separator(_model(args), args)
    except (CheckpointError, ValueError) as exc:
        log.error(str(exc))
        return 2
    failed = len(problems)
    for path in inputs:
        try:
            written = separator.separate_file(
                path, out_dir=args.out, output_files=args.output_files, filename=args.filename, ext=args.format,
                subtype=subtype, clip=args.clip_mode, force=args.force, progress=not args.quiet)
        except (AudioError, ValueError) as exc:
            failed += 1
            log.error(str(exc))
            continue
        except Exception as exc:  # one bad input must not stop the others
            failed += 1
            if args.verbose:
                traceback.print_exc()
            log.error(f"{path}: {type(exc).__name__}: {exc}")
            continue
        if not args.quiet:
            print(f"{path} -> " + ", ".join(written))
    return 1 if failed else 0


def _evaluate(args):
    try:
        model = _model(args)
        separate = None if args.oracle is not None else _separator(model, args).separate
        results = ev.evaluate(args.data_dir, list(model.source_names), separate=separate, oracle=args.oracle,
                              stft=model.stft, progress=not args.quiet)
    except (AudioError, CheckpointError, ValueError) as exc:
        log.error(str(exc))
        return 1
    print(ev.summary_table(results))
    csv_path = args.csv or (os.path.splitext(args.out)[0] + ".csv" if args.out else None)
    ev.write_results(results, args.out, csv_path)
    if args.plot:
        ev.plot_histogram(results, args.plot)
    for p in (args.out, csv_path, args.plot):
        if p and not args.quiet:
            print(f"wrote {p}")
    return 0


def _add_separator_options(parser):
    """The options that build the Separator, shared by predict and evaluate."""
    g = parser.add_argument_group("separation")
    g.add_argument("--model", help="checkpoint file (default: the bundled vocals/accompaniment model)")
    g.add_argument("--segment", type=float, default=DEFAULT_SEGMENT,
                   help=f"seconds per segment (default {DEFAULT_SEGMENT:g})")
    g.add_argument("--overlap", type=float, default=1.0, help="seconds of cross-fade between segments (default 1)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    g.add_argument("--batch-size", type=int, default=4, help="segments (x channels) per forward pass")
    g.add_argument("--method", choices=METHODS, help="mask head (default) or k-means on DC embeddings")
    g.add_argument("--misi", type=int, default=0, metavar="N", help="MISI phase-reconstruction iterations")
    g.add_argument("--wiener", type=int, default=WIENER_DEFAULT, metavar="N",
                   help=f"multichannel Wiener filter iterations across channels (default {WIENER_DEFAULT}; 0: off)")


def _add_output_options(parser):
    g = parser.add_argument_group("messages")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary; errors only")
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
    info = sub.add_parser("info", help="versions, extension build and the backend of each op")
    info.set_defaults(func=_info)

    p = sub.add_parser("predict", help="separate audio files (any length, bounded memory)",
                       description="Separate each INPUT (files, or folders of audio files) into its sources.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", default="separated", help="output folder (default: separated/)")
    p.add_argument("--filename", default="{track}/{stem}.{ext}",
                   help="output name under --out; fields {track}, {stem} (source name), {ext}")
    p.add_argument("--output-files", nargs="+", metavar="FILE",
                   help="one input only: write its sources to these files, in the model's source order")
    p.add_argument("--format", default="wav", choices=["wav", "flac", "ogg", "aiff"], help="output format")
    p.add_argument("--subtype", help="libsndfile subtype (default PCM_16 for wav/flac)")
    p.add_argument("--int24", action="store_true", help="24-bit integer output")
    p.add_argument("--float32", action="store_true", help="32-bit float output")
    p.add_argument("--clip-mode", choices=["clamp", "none"], default="clamp",
                   help="clamp samples to [-1, 1] (default) or leave them (use with --float32)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_separator_options(p)
    _add_output_options(p)
    p.set_defaults(func=_predict)

    e = sub.add_parser("evaluate", help="score separations with museval (BSS Eval v4) and SI-SDR",
                       description="Separate DATA_DIR/<track>/mixture.wav and score it against "
                                   "DATA_DIR/<track>/<source>.wav, SiSEC style (median over 1 s windows, "
                                   "then over tracks).")
    e.add_argument("data_dir", metavar="DATA_DIR")
    e.add_argument("--out", help="results JSON (a CSV of the same name is written beside it)")
    e.add_argument("--csv", help="per-track CSV (default: beside --out)")
    e.add_argument("--plot", help="per-track SDR histogram per source (PNG/PDF/SVG)")
    e.add_argument("--oracle", choices=ev.ORACLES, help="score oracle masks, or the unprocessed mixture")
    _add_separator_options(e)
    _add_output_options(e)
    e.set_defaults(func=_evaluate)

    t = sub.add_parser("train", help="train a model from a TOML recipe (staged, resumable, DDP)",
                       description="Train a separation model from a recipe (see recipes/).")
    t.add_argument("config", nargs="?", metavar="CONFIG", help="TOML recipe (optional with --resume)")
    t.add_argument("--run-dir", help="folder for checkpoints and metrics (default runs/<config name>)")
    t.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue from RUN_DIR/last.pt (or the given checkpoint)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. stages.0.epochs=2 (repeatable)")
    t.add_argument("--device", help="cpu, cuda or auto (default: train.device)")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    t.set_defaults(func=train.main)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
