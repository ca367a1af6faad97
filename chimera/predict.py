"""The ``chimera predict`` command: inputs, output names, and the work shared among processes.

Every output name is computed before any work, so inputs that would write the same file
(``cd1/01.flac`` and ``cd2/01.flac`` under ``{track}``) are refused up front. The inputs are
then separated here, or shared among ``-j`` worker processes, or among torchrun's ranks
(each rank takes its share of the same list: :mod:`chimera.parallel`). Each input belongs
to exactly one process; a bad input is reported on one line and counted, the others go on,
and the exit status is non-zero when any process had a failure.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from collections import defaultdict
from dataclasses import dataclass

from . import pretrained
from .atomic import folders_to_make, remove_empty_folders, unwritable_folder
from .audio import AUDIO_EXTENSIONS, OUTPUT_FORMATS, AudioError, check_output_format, format_of
from .models import CheckpointError
from .parallel import balanced_shares, device_for, joined, process_pool, sum_over_ranks, torchrun_rank
from .separate import Separator, output_paths, resolve_device, separate_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Input:
    path: str
    relpath: str | None = None     # under the folder it was found in, without extension
    targets: tuple = ()            # its output files


def collect_inputs(paths):
    """Files as given; folders: every audio file inside (recursively, sorted), with its path
    under the folder. Returns (inputs, problems, repeats): one message per folder without
    audio, and the files found again (named twice, or also inside a folder given), which
    are left out: each file is separated once."""
    found, problems = [], []
    for p in map(os.fspath, paths):
        if not os.path.isdir(p):
            found.append(Input(p))
            continue
        inside = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                        if f.lower().endswith(AUDIO_EXTENSIONS))
        if not inside:
            problems.append(f"{p}: folder contains no audio files")
        found += [Input(f, os.path.splitext(os.path.relpath(f, p))[0]) for f in inside]
    seen, kept, repeats = set(), [], []
    for i in found:  # the first mention of a file is kept
        key = os.path.abspath(i.path)
        (repeats if key in seen else kept).append(i)
        seen.add(key)
    return kept, problems, [i.path for i in repeats]


def plan_outputs(inputs, source_names, out_dir, filename, ext, output_files=None):
    """The inputs with their output files; a ValueError for a bad --filename, and one message
    per output file that two inputs (or two sources) would write."""
    planned = [Input(i.path, i.relpath, tuple(output_paths(i.path, source_names, out_dir, filename, ext,
                                                           output_files, i.relpath)))
               for i in inputs]
    writers = defaultdict(list)
    for i in planned:
        for t in i.targets:
            writers[os.path.abspath(t)].append(i.path)
    clashes = [_clash(t, p, output_files) for t, p in writers.items() if len(p) > 1]
    return planned, clashes


def _clash(target, writers, output_files):
    inputs = list(dict.fromkeys(writers))
    if len(inputs) == 1:  # one input, two of its sources: the names lack a per-source part
        fix = "give each source its own file" if output_files else "put the {stem} field in --filename"
        return f"{target}: would be written for two sources of {inputs[0]} ({fix})"
    return (f"{target}: would be written for {' and '.join(inputs)} (name outputs with --filename fields "
            "such as {relpath}/{stem}.{ext}, {trackext} or {stem})")


def output_format(args):
    """--format, else what the output names end in (--output-files v.flac a.flac: flac), else wav."""
    if args.format:
        return args.format
    said = {format_of(n) for n in (args.output_files or [args.filename])}
    return said.pop() if len(said) == 1 and None not in said else "wav"


def output_problems(inputs, fmt):
    """One message per reason an output cannot be written, found before any work: an input
    (its own or another's, a symlink's target included, --force or not), a folder where a
    file goes, a file or an unwritable folder where a folder goes, or a name whose extension
    is another format than the one written (WAV data in a .flac file)."""
    problems = {}
    # an input replaced by another's output was separated from that output (or lost), silently
    named = {os.path.realpath(i.path): i.path for i in inputs}
    for i in inputs:
        for t in i.targets:
            hit = named.get(os.path.realpath(t))
            if hit is None:
                continue
            which = "" if os.path.abspath(t) == os.path.abspath(hit) else f" {hit} (the same file)"
            problems.setdefault(t, f"{t}: is the input{which}; an output would overwrite it" if hit == i.path
                                else f"{t}: is an input{which}; an output of {i.path} would overwrite it")
    for t in dict.fromkeys(t for i in inputs for t in i.targets):
        said = format_of(t)
        blocked = unwritable_folder(t)
        if os.path.isdir(t):
            problems.setdefault(t, f"{t}: is a folder, not a file name")
        elif blocked is not None and not os.path.isdir(blocked):
            problems.setdefault(blocked, f"{blocked}: is a file, not a folder (outputs such as {t} go under it)")
        elif blocked is not None:
            problems.setdefault(blocked, f"{blocked}: cannot be written (outputs such as {t} go under it)")
        elif said is not None and OUTPUT_FORMATS[said][0] != OUTPUT_FORMATS[fmt][0]:
            problems.setdefault(t, f"{t}: would hold {fmt} data; give --format {said} or name it .{fmt}")
    return list(problems.values())


def load_model(spec=None):
    """The model --model `spec` names (None: the bundled default; see :func:`chimera.pretrained.load`).
    A folder is said as such (it read "no such checkpoint file"); "" is no name (it ran the default)."""
    spec = pretrained.DEFAULT if spec is None else os.fspath(spec)
    if spec not in pretrained.MODELS and os.path.isdir(spec):
        raise CheckpointError(f"{spec}: is a folder, not a checkpoint file")
    return pretrained.load(spec)


def run(args, separator_options, init=None) -> int:
    """``chimera predict`` with the parsed `args`; `separator_options`: the Separator's
    keyword arguments but the device; `init`: what each ``-j`` worker runs first (logging)."""
    rank = torchrun_rank()
    lead = rank.rank == 0
    if rank.distributed and args.jobs > 1:
        log.error("-j/--jobs cannot be combined with torchrun: use one or the other")
        return 2
    inputs, problems, repeats = collect_inputs(args.inputs)
    for p in repeats if lead else ():
        log.warning(f"{p}: given more than once; separated once")
    if args.output_files is not None and len(inputs) != 1:
        log.error(f"--output-files needs exactly one input, got {len(inputs)}")
        return 2
    model_spec = pretrained.DEFAULT if args.model is None else args.model
    args.format = output_format(args)  # resolved once: the -j workers get it with args
    try:
        model = load_model(model_spec)
        out_dir = os.path.join(args.out, pretrained.model_name(model_spec)) if args.model_subfolder else args.out
        inputs, clashes = plan_outputs(inputs, model.source_names, out_dir, args.filename, args.format,
                                       args.output_files)
        clashes = clashes or output_problems(inputs, args.format)
        check_output_format(args.format, _subtype(args))  # a bad --subtype: once, before any work
        device = device_for(args.device, rank.local)
        resolve_device(device)
        # here, or only to check the options before any work when -j workers build their own
        separator = Separator(model, device=device if args.jobs == 1 else "cpu", **separator_options)
    except (CheckpointError, ValueError) as exc:
        log.error(str(exc))
        return 2
    if clashes:
        for c in clashes if lead else ():
            log.error(c)
        return 2
    for p in problems if lead else ():
        log.error(p)
    costs = [_size(i.path) for i in inputs]
    made, finished = folders_to_make(t for i in inputs for t in i.targets), False
    try:
        with joined(rank):
            if args.jobs > 1:
                shares = balanced_shares(costs, args.jobs)
                with process_pool(args.jobs, init) as pool:
                    failed = sum(pool.starmap(_worker, [(args, separator_options, [inputs[i] for i in s], k)
                                                        for k, s in enumerate(shares)]))
            else:
                mine = balanced_shares(costs, rank.world)[rank.rank]
                failed = _separate_all(separator, args, [inputs[i] for i in mine],
                                       progress=not (args.quiet or rank.distributed),
                                       tag=f"[rank {rank.rank}] " if rank.distributed else "")
            failed = sum_over_ranks(failed, rank) + len(problems)  # every rank done writing
            finished = True
    finally:
        # The empty folders made for failed inputs, once no process writes (the -j pool is
        # joined or terminated here; torchrun's other ranks only known done when finished).
        if finished or not rank.distributed:
            remove_empty_folders(made)
    if failed and lead and (rank.distributed or args.jobs > 1):
        log.error(f"{failed} of {len(inputs) + len(problems)} inputs failed")
    return 1 if failed else 0


def _subtype(args):
    """The output subtype the options ask for (None: the format's default)."""
    return "PCM_24" if args.int24 else "FLOAT" if args.float32 else args.subtype


def _size(path):
    try:
        return os.path.getsize(path) + 1   # + 1: empty and missing files still spread out
    except OSError:
        return 1


def _worker(args, separator_options, inputs, local_rank) -> int:
    """A -j worker: its own Separator (on its own GPU, if any), no progress bar."""
    if not inputs:
        return 0
    separator = Separator(load_model(args.model), device=device_for(args.device, local_rank), **separator_options)
    return _separate_all(separator, args, inputs, progress=False, tag=f"[job {local_rank}] ")


def _separate_all(separator, args, inputs, progress, tag="") -> int:
    """Separate `inputs` with `separator`; returns how many failed (each reported on one
    line). `tag` begins each output line (which process wrote it)."""
    subtype = _subtype(args)
    failed = 0
    for item in inputs:
        try:
            written = separate_file(separator, item.path, targets=list(item.targets), ext=args.format,
                                    subtype=subtype, clip=args.clip_mode, force=args.force, progress=progress,
                                    tidy=False)  # run() tidies once all are done
        except (AudioError, ValueError) as exc:
            failed += 1
            log.error(str(exc))
            continue
        except Exception as exc:  # one bad input must not stop the others
            failed += 1
            if args.verbose:
                traceback.print_exc()
            log.error(f"{item.path}: {type(exc).__name__}: {exc}")
            continue
        if not args.quiet:
            # One write per line: with unbuffered output (PYTHONUNBUFFERED) print() writes the
            # text and its newline apart, and two ranks' lines interleaved in a shared pipe.
            sys.stdout.write(f"{tag}{item.path} -> " + ", ".join(written) + "\n")
            sys.stdout.flush()
    return failed

