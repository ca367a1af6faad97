"""The speed-up regression gate (benchmarks/check_floors.py, `make bench-check`): it fails
when a speed-up is below its floor, and it trips when a kernel is replaced by something slower."""
import json
import os
import subprocess
import sys


from testutil import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from check_floors import load_floors  # noqa: E402  (benchmarks/ is not a package)

CHECK = os.path.join(ROOT, "benchmarks", "check_floors.py")
GATED = "benchmarks/bench_codebook.py::test_codebook_fwd_bwd[op]"


def _gate(run, floors, tmp_path, shapes="default"):
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "floors.toml").write_text(floors)
    return subprocess.run([sys.executable, CHECK, str(tmp_path / "run.json"), "--floors", str(tmp_path / "floors.toml"),
                           "--shapes", shapes], capture_output=True, text=True)


def _run(**speedups):
    return {"machine_info": {"cpu_model": "test CPU"},
            "benchmarks": [{"fullname": name, "extra_info": {} if s is None else {"speedup": s, "baseline": "plain"}}
                           for name, s in speedups.items()]}


def test_gate_passes_at_or_above_the_floors(tmp_path):
    out = _gate(_run(a=4.0, b=2.0), '[default]\na = 3.0\nb = 2.0\n[full]\na = 9.0\n', tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   a: 4.00x plain (floor 3x)" in out.stdout


def test_gate_fails_below_a_floor_and_names_it(tmp_path):
    out = _gate(_run(a=2.9, b=5.0), '[default]\na = 3.0\nb = 2.0\n', tmp_path)
    assert out.returncode == 1
    assert "FAIL a: 2.90x plain (floor 3x)" in out.stdout and "ok   b" in out.stdout
    # the full shapes have their own floors
    assert _gate(_run(a=2.9), '[default]\na = 1.0\n[full]\na = 3.0\n', tmp_path, "full").returncode == 1


def test_gate_fails_when_a_gated_benchmark_did_not_record(tmp_path):
    out = _gate(_run(a=None), '[default]\na = 3.0\nmissing = 1.0\n', tmp_path)
    assert out.returncode == 1
    assert "FAIL a: recorded no speed-up" in out.stdout and "FAIL missing: did not run" in out.stdout


def test_every_floor_names_a_benchmark_that_exists():
    ids = subprocess.run([sys.executable, CHECK, "--select"], capture_output=True, text=True, check=True).stdout.split()
    assert GATED in ids
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _run_gated_benchmark(tmp_path, **env):
    """The gated codebook benchmark, really timed (default shape), then the gate on its JSON."""
    result = tmp_path / "bench.json"
    inherited = {k: v for k, v in os.environ.items() if k != "CHIMERA_REQUIRE_EXT"}  # make test sets it
    bench = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", GATED, "--benchmark-only",
                            f"--benchmark-json={result}"], capture_output=True, text=True, cwd=ROOT,
                           env={**inherited, **env})
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    floor = load_floors(shapes="default")[GATED]  # that benchmark's own floor, the others did not run
    (tmp_path / "floors.toml").write_text(f'[default]\n"{GATED}" = {floor}\n')
    return subprocess.run([sys.executable, CHECK, str(result), "--floors", str(tmp_path / "floors.toml"), "--shapes",
                           "default"], capture_output=True, text=True)


def test_gate_trips_when_the_kernel_falls_back_to_the_reference(tmp_path):
    # CHIMERA_DISABLE_EXT=1: the op runs its pure-PyTorch twin, slower than plain PyTorch.
    gate = _run_gated_benchmark(tmp_path, CHIMERA_DISABLE_EXT="1")
    assert gate.returncode == 1, gate.stdout
    assert f"FAIL {GATED}: " in gate.stdout and "plain PyTorch (floor" in gate.stdout  # it ran, and fell short
