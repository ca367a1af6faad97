"""Checkpoints of one training compared on the validation split (never on a test split).

    python -m tools.choose_checkpoint --data demo-data/musdb/valid --models runs/solo/best.pt runs/solo/last.pt
    python -m tools.choose_checkpoint --data demo-data/musdb/valid --models runs/solo/last.pt --wiener 0 1 2
    python -m tools.choose_checkpoint --data demo-data/musdb/valid --models m.pt --wiener-exponent 0.5 0.75 1
    python -m tools.choose_checkpoint --data demo-data/musdb/valid --models m.pt --method mask kmeans
    python -m tools.choose_checkpoint --data demo-data/musdb/valid demo-data-valid48/musdb/valid --by-kind --models ...

For each checkpoint, with the Separator's defaults (what ``chimera predict`` runs), on every
validation track: the SI-SDR improvement of each source on the mixture (whole tracks, both
channels as one signal), and the leak of each stem played alone, the energy of the output
that should stay silent (the other source's) over the input's. Prints the medians over
tracks as a Markdown table, so that a checkpoint can be chosen on separation and on how well
a source alone stays alone without looking at held-out data. ``--wiener`` and
``--wiener-exponent`` compare numbers of Wiener iterations and the filter's exponent the same
way, ``--misi`` numbers of MISI phase-reconstruction iterations, ``--method`` the mask head
against k-means on the embeddings (one row per checkpoint and setting). Several ``--data`` folders pool their tracks;
``--by-kind`` adds each source's SI-SDRi over the tracks of each vocal kind (speech, recorded,
sung), read from the folders' ``metadata.json`` (what ``tools.demodata`` writes).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from chimera.evaluate import track_median
from chimera.separate import DEFAULT_MISI_ITERS, DEFAULT_WIENER_EXPONENT, DEFAULT_WIENER_ITERS, METHODS, Separator
from tools.choose_segment import distinct, improvement, model_or_exit, positive, read_tracks, validation_files
from tools.eval_goals import leak_db  # the leak as the held-out goals measure it


def two_source_model(model_path: str):
    """The checkpoint ``model_path`` (or a bundled model's name), loaded; one line naming it
    and the problem for a missing, folder, corrupt or other than two-source one."""
    model = model_or_exit(model_path, "choose_checkpoint")
    if len(model.source_names) != 2:
        raise SystemExit(f"choose_checkpoint: {model_path}: a two-source model is needed, "
                         f"it has {list(model.source_names)}")
    return model


def track_kinds(data: str) -> dict[str, str]:
    """Track name -> vocal kind, from ``data/metadata.json`` (instrumentals have none)."""
    path = Path(data) / "metadata.json"
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, list):  # a dict's keys were taken for its tracks
            raise ValueError(f"a list of tracks expected, not a {type(meta).__name__}")
        return {m["name"]: m["kind"] for m in meta if m.get("kind")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SystemExit(f"choose_checkpoint: {path}: no track kinds to group by ({exc})") from None


def scores(model, data: str | list[str], wiener_iters: int = DEFAULT_WIENER_ITERS,
           wiener_exponent: float = DEFAULT_WIENER_EXPONENT, by_kind: bool = False,
           misi_iters: int = DEFAULT_MISI_ITERS, method: str | None = None) -> dict[str, float]:
    """Medians over the tracks of ``data`` (a folder or several, pooled) for ``model`` (a loaded
    model or a checkpoint's path); ``by_kind`` adds "<source> SI-SDRi (<kind>)" medians."""
    if isinstance(model, str):
        model = two_source_model(model)
    folders = [data] if isinstance(data, str) else list(data)
    names = list(model.source_names)
    sep = Separator(model, device="cpu", wiener_iters=wiener_iters, wiener_exponent=wiener_exponent,
                    misi_iters=misi_iters, method=method)
    rows = {f"{s} SI-SDRi": [] for s in names} | {f"{s} alone: leak": [] for s in names}
    by_kind_rows = {}
    # every folder listed (and its kinds read) before any work: a bad second folder stopped
    # the run once the first one's tracks were separated
    listed = [(validation_files(folder, names), track_kinds(folder) if by_kind else {}) for folder in folders]
    for files, kinds in listed:
        for t in read_tracks(files):
            est = sep.separate(t.mixture, t.rate).numpy()
            for i, s in enumerate(names):
                gain = improvement(est[i], t.references[i], t.mixture)
                rows[f"{s} SI-SDRi"].append(gain)
                if t.name in kinds:
                    by_kind_rows.setdefault(f"{s} SI-SDRi ({kinds[t.name]})", []).append(gain)
                alone = sep.separate(t.references[i], t.rate).numpy()
                rows[f"{s} alone: leak"].append(leak_db(alone, 1 - i, t.references[i]))
    # a track with a silent stem has no SI-SDRi nor leak for it (NaN): left out, not the column's NaN
    return {k: track_median(v) for k, v in (rows | by_kind_rows).items()}  # the usual columns first


def count(value: str) -> int:
    """An argparse type: a whole number >= 0 (iterations)."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, nargs="+",
                    help="validation folders of <track>/{mixture,<source>...}.wav (several: their tracks pooled)")
    ap.add_argument("--by-kind", action="store_true",
                    help="also each source's SI-SDRi per vocal kind (from each folder's metadata.json)")
    ap.add_argument("--models", nargs="+", required=True,
                    help="checkpoints to compare (two-source models with the same source names; a bundled "
                         "model's name also works)")
    ap.add_argument("--wiener", nargs="+", type=count, default=[DEFAULT_WIENER_ITERS], metavar="N",
                    help=f"Wiener iterations to compare (default: the Separator's, {DEFAULT_WIENER_ITERS})")
    ap.add_argument("--wiener-exponent", nargs="+", type=positive("number"), default=[DEFAULT_WIENER_EXPONENT],
                    metavar="P",
                    help=f"exponents of the Wiener filter to compare (default: the Separator's, "
                         f"{DEFAULT_WIENER_EXPONENT:g})")
    ap.add_argument("--misi", nargs="+", type=count, default=[DEFAULT_MISI_ITERS], metavar="N",
                    help=f"MISI iterations to compare (default: the Separator's, {DEFAULT_MISI_ITERS})")
    ap.add_argument("--method", nargs="+", choices=METHODS, default=[None],
                    help="inference methods to compare (default: the model's, as predict)")
    args = ap.parse_args(argv)
    # everything checked before any work (a bad second checkpoint or setting stopped the run
    # after the first one's rows): the options, the models, the data folders
    distinct(args.models, "--models", key=os.path.realpath)
    distinct(args.data, "--data", key=os.path.realpath)
    for option, values in (("--wiener", args.wiener), ("--wiener-exponent", args.wiener_exponent),
                           ("--misi", args.misi), ("--method", args.method)):
        distinct(values, option)
    models = {path: two_source_model(path) for path in args.models}
    first, names = args.models[0], sorted(next(iter(models.values())).source_names)
    for path, model in models.items():
        if sorted(model.source_names) != names:  # the table's columns are the first model's sources
            raise SystemExit(f"choose_checkpoint: {path}: its sources {list(model.source_names)} are not those of "
                             f"{first} {list(models[first].source_names)}")
    settings = list(itertools.product(args.method, args.wiener, args.wiener_exponent, args.misi))
    for path, model in models.items():
        for method, iters, power, misi in settings:
            try:
                Separator(model, device="cpu", wiener_iters=iters, wiener_exponent=power, misi_iters=misi,
                          method=method)
            except ValueError as exc:  # k-means on a model without embeddings, say
                raise SystemExit(f"choose_checkpoint: {path}: {exc}") from None
    for folder in args.data:
        validation_files(folder, list(models[first].source_names))
        if args.by_kind:
            track_kinds(folder)
    header = None
    for path, model in models.items():
        for method, iters, power, misi in settings:
            row = scores(model, args.data, iters, power, by_kind=args.by_kind, misi_iters=misi, method=method)
            if header is None:
                header = list(row)
                print("| checkpoint | method | Wiener | exponent | MISI | "
                      + " | ".join(f"{k} (dB)" for k in header) + " |")
                print("| --- | --- | --- | --- | --- |" + " --- |" * len(header))
            print(f"| {path} | {method or 'default'} | {iters} | {power:g} | {misi} | "
                  + " | ".join(f"{row[k]:.2f}" for k in header) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
