"""Regression gate on speed-ups: fail when a benchmark's speed-up over its in-run baseline
(extra_info["speedup"], see benchutil.py) is below its floor in benchmarks/floors.toml.

    python benchmarks/check_floors.py RUN.json     # a pytest-benchmark --benchmark-json file
    python benchmarks/check_floors.py --select     # the benchmarks that have floors (node ids)

Ratios, not absolute times: both sides of a ratio ran in the same process on the same
machine, so the gate holds on a noisy shared machine and on any CPU. The floors of the
shapes the run measured apply (its machine_info "bench_shapes": default, or full with
CHIMERA_BENCH_FULL=1). Exit status 1 when a speed-up is below its floor or a benchmark
with a floor did not record one, and when the floors or the run cannot be read (one line):
a floor must be a finite number > 0 (0 or less never fails) and a table must name at least
one benchmark (an empty one passed with nothing checked, and --select then selected nothing,
which runs every benchmark).
"""
import argparse
import json
import math
import numbers
import os
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
FLOORS = os.path.join(HERE, "floors.toml")


def load_floors(path=FLOORS, shapes=None):
    """{benchmark full name: floor} for the shapes ("default" or "full")."""
    shapes = shapes or ("full" if os.environ.get("CHIMERA_BENCH_FULL", "") == "1" else "default")
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"check_floors: cannot read {path}: {exc}") from None
    if not isinstance(table.get(shapes), dict):
        raise SystemExit(f"check_floors: {path} has no [{shapes}] table")
    floors = {}
    for name, floor in table[shapes].items():
        if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not (math.isfinite(floor) and floor > 0):
            raise SystemExit(f"check_floors: {path}: [{shapes}] {name!r} = {floor!r}: a floor is a finite number > 0")
        floors[name] = float(floor)
    if not floors:
        raise SystemExit(f"check_floors: {path}: [{shapes}] names no benchmark")
    return floors


def check(run, floors):
    """Lines of the report and whether every floor holds. `run` is the parsed JSON."""
    found = {b["fullname"]: b for b in run.get("benchmarks", [])}
    lines, ok = [], True
    for name, floor in floors.items():
        bench = found.get(name)
        speedup = None if bench is None else bench.get("extra_info", {}).get("speedup")
        if speedup is None:
            why = "did not run" if bench is None else "recorded no speed-up (benchmarks disabled?)"
            lines.append(f"FAIL {name}: {why}; floor {floor:g}x")
            ok = False
            continue
        if isinstance(speedup, bool) or not isinstance(speedup, numbers.Real):
            lines.append(f"FAIL {name}: recorded {speedup!r}, not a speed-up; floor {floor:g}x")
            ok = False
            continue
        baseline = bench["extra_info"].get("baseline", "its baseline")
        verdict = "ok  " if speedup >= floor else "FAIL"
        ok &= speedup >= floor
        lines.append(f"{verdict} {name}: {speedup:.2f}x {baseline} (floor {floor:g}x)")
    machine = run.get("machine_info", {})
    lines.append(f"machine: {machine.get('cpu_model', '?')}, chimera path {machine.get('chimera_cpu_capability', '?')}, "
                 f"ATen {machine.get('aten_cpu_capability', '?')}, {machine.get('torch_threads', '?')} threads, "
                 f"{machine.get('bench_shapes', '?')} shapes")
    return lines, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="pytest-benchmark JSON file")
    parser.add_argument("--floors", default=FLOORS)
    parser.add_argument("--shapes", choices=["default", "full"])
    parser.add_argument("--select", action="store_true", help="print the node ids of the benchmarks with floors")
    args = parser.parse_args(argv)
    if args.select:
        print(" ".join(sorted(load_floors(args.floors, args.shapes))))
        return 0
    if args.run is None:
        parser.error("a pytest-benchmark JSON file is needed")
    try:
        with open(args.run) as f:
            run = json.load(f)
    except (OSError, ValueError) as exc:  # (a file that is not UTF-8 too)
        print(f"check_floors: cannot read {args.run}: {exc}", file=sys.stderr)
        return 1
    benchmarks = run.get("benchmarks") if isinstance(run, dict) else None
    if not (isinstance(benchmarks, list) and all(isinstance(b, dict) and isinstance(b.get("fullname"), str)
                                                 and isinstance(b.get("extra_info", {}), dict) for b in benchmarks)
            and isinstance(run.get("machine_info", {}), dict)):
        print(f"check_floors: {args.run}: not a pytest-benchmark JSON file (--benchmark-json): no list of "
              "benchmarks with their full names", file=sys.stderr)
        return 1
    # the floors of the shapes the run measured (conftest.py records them), not those of this
    # process's environment: a full run was held to the default shapes' lower floors
    ran = run.get("machine_info", {}).get("bench_shapes")
    if args.shapes and ran and args.shapes != ran:
        print(f"check_floors: {args.run} ran the {ran} shapes, not the {args.shapes} ones", file=sys.stderr)
        return 1
    lines, ok = check(run, load_floors(args.floors, args.shapes or ran))
    print("\n".join(lines))
    if not ok:
        print(f"check_floors: a speed-up fell below its floor in {args.floors}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
