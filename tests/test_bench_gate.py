"""The speed-up regression gate (benchmarks/check_floors.py, `make bench-check`): it fails
when a speed-up is below its floor, and it trips when a kernel is replaced by something slower."""
import json
import os
import subprocess
import sys

import pytest

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


def test_the_gate_applies_the_floors_of_the_shapes_that_ran(tmp_path):
    # a full-shape run checked without --shapes (CHIMERA_BENCH_FULL unset in the checker's
    # environment) was held to the default shapes' lower floors
    run = _run(a=2.0)
    run["machine_info"]["bench_shapes"] = "full"
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "floors.toml").write_text('[default]\na = 1.0\n[full]\na = 3.0\n')
    env = {k: v for k, v in os.environ.items() if k != "CHIMERA_BENCH_FULL"}
    out = subprocess.run([sys.executable, CHECK, str(tmp_path / "run.json"), "--floors", str(tmp_path / "floors.toml")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "FAIL a: 2.00x plain (floor 3x)" in out.stdout, out.stdout + out.stderr
    # asking for the other shapes' floors is refused, not applied
    out = _gate(run, '[default]\na = 1.0\n[full]\na = 3.0\n', tmp_path, "default")
    assert out.returncode == 1 and "ran the full shapes" in out.stderr, out.stdout + out.stderr


class _Disabled:
    """pytest-benchmark's fixture under --benchmark-disable (what CI runs): each body once."""
    disabled, stats = True, None

    def __init__(self):
        self.extra_info = {}

    def __call__(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def pedantic(self, fn, args=(), kwargs=None, **_):
        return fn(*args, **(kwargs or {}))


@pytest.mark.parametrize("phase", ["forward", "forward-backward"])
@pytest.mark.parametrize("loss", ["dc", "deep-lda"])
def test_a_loss_benchmark_checks_that_its_baseline_computes_the_same(monkeypatch, loss, phase):
    import bench_affinity
    bench_affinity.test_loss(_Disabled(), loss, "chimera", phase)  # the two agree
    name, impls = bench_affinity.BASELINE[loss]
    baseline = impls[name]
    monkeypatch.setitem(impls, name, lambda V, y, w: 1.01 * baseline(V, y, w))  # 1 % off, loss and gradient
    with pytest.raises(AssertionError):
        bench_affinity.test_loss(_Disabled(), loss, "chimera", phase)


@pytest.mark.parametrize("bench", ["test_codebook_forward", "test_codebook_fwd_bwd"])
def test_a_codebook_benchmark_checks_that_plain_pytorch_computes_the_same(monkeypatch, bench):
    import bench_codebook
    getattr(bench_codebook, bench)(_Disabled(), "op")
    plain = bench_codebook.plain
    monkeypatch.setattr(bench_codebook, "plain", lambda logits, codebook: plain(logits, 0.99 * codebook))
    with pytest.raises(AssertionError):
        getattr(bench_codebook, bench)(_Disabled(), "op")


def test_peak_memory_is_measured_on_the_benchmarks_threads(tmp_path, one_thread):
    import benchutil
    seen = tmp_path / "threads"
    benchutil.peak_rss_delta_mb("", f"open({str(seen)!r}, 'w').write(str(torch.get_num_threads()))")
    assert seen.read_text() == "1"  # not os.cpu_count()


class _Timed(_Disabled):
    """The fixture of a timed run, its statistics made up (the body's own figures are not tested)."""
    disabled = False

    def __init__(self):
        super().__init__()
        self.stats = type("Stats", (), {"stats": type("S", (), {"mean": 1.0, "median": 1.0})})


@pytest.mark.parametrize("losses, loaded, ok", [((2.0, 2.0), True, True), ((2.0, 2.2), True, False),
                                               ((2.0, 2.0), False, False)])
def test_the_training_speed_up_is_over_the_same_step_with_the_extension(monkeypatch, losses, loaded, ok):
    import bench_train

    def in_subprocess(disable_ext):  # both sides' [examples/s, first loss, extension loaded]
        return [10.0, losses[disable_ext], loaded and not disable_ext]
    monkeypatch.setattr(bench_train, "_in_subprocess", in_subprocess)
    if ok:
        bench_train.test_train_throughput(_Timed())
    else:
        with pytest.raises(AssertionError):
            bench_train.test_train_throughput(_Timed())


def test_a_plain_pytest_skips_the_benchmarks_only(tmp_path):
    # benchmarks/conftest.py skipped every item whose path held "benchmarks", so every test
    # of a checkout under such a folder (/home/ci/benchmarks/chimera/tests/...)
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_conftest", os.path.join(ROOT, "benchmarks", "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class Item:
        def __init__(self, path):
            self.fspath, self.markers = path, []

        def add_marker(self, marker):
            self.markers.append(marker)
    bench = Item(os.path.join(ROOT, "benchmarks", "bench_signal.py"))
    tests = [Item(os.path.join(ROOT, "tests", "test_signal.py")), Item("/home/ci/benchmarks/chimera/tests/test_a.py")]
    config = type("Config", (), {"option": type("Option", (), {})()})()
    conftest.pytest_collection_modifyitems(config, [bench, *tests])
    assert bench.markers and not any(t.markers for t in tests)


@pytest.mark.parametrize("floors, why", [
    ('[default]\na = 0\n', "'a' = 0: a floor is a finite number > 0"),      # never fails: no gate
    ('[default]\na = -1.0\n', "'a' = -1.0: a floor is a finite number > 0"),
    ('[default]\na = nan\n', "'a' = nan: a floor is a finite number > 0"),   # always fails
    ('[default]\na = "2"\n', "'a' = '2': a floor is a finite number > 0"),   # a traceback
    ('[default]\na = true\n', "'a' = True: a floor is a finite number > 0"),
    ('[default]\n', r"\[default\] names no benchmark"),                      # passed, nothing checked
    ('default = 3\n', r"has no \[default\] table"),
    ('[default\n', "cannot read .*floors.toml: Expected ']'"),               # a traceback
])
def test_floors_that_cannot_gate_are_one_line(tmp_path, floors, why):
    import re
    out = _gate(_run(a=0.5), floors, tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert re.search(f"^check_floors: .*{why}", out.stderr.strip()) and len(out.stderr.strip().splitlines()) == 1
    # --select, which `make bench-check` gives pytest, fails the same way: empty, it ran every benchmark
    sel = subprocess.run([sys.executable, CHECK, "--select", "--floors", str(tmp_path / "floors.toml")],
                         capture_output=True, text=True)
    assert sel.returncode == 1 and sel.stdout == "" and re.search(why, sel.stderr), sel.stdout + sel.stderr


def test_a_missing_floors_file_or_a_run_that_is_not_a_benchmark_json_is_one_line(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(_run(a=2.0)))
    out = subprocess.run([sys.executable, CHECK, str(tmp_path / "run.json"), "--floors", str(tmp_path / "none.toml")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("check_floors: cannot read") and "Traceback" not in out.stderr
    for run in ([], {"benchmarks": [{"name": "a"}]}, {"benchmarks": {"a": 1}}, {"benchmarks": [], "machine_info": 3}):
        out = _gate(run, '[default]\na = 1.0\n', tmp_path)
        assert out.returncode == 1 and "not a pytest-benchmark JSON file" in out.stderr, out.stdout + out.stderr
        assert "Traceback" not in out.stderr
    out = _gate(_run(a="fast"), '[default]\na = 1.0\n', tmp_path)  # a speed-up that is no number fails, named
    assert out.returncode == 1 and "FAIL a: recorded 'fast', not a speed-up" in out.stdout, out.stdout + out.stderr


def test_every_floor_is_above_what_a_fall_back_gives():
    # floors.toml: each floor above the pure-PyTorch fall-back's speed-up (below 1, ~1 for
    # the iSTFT), so that losing the kernel fails the gate
    for shapes in ("default", "full"):
        floors = load_floors(shapes=shapes)
        assert floors and all(f > 1.0 for f in floors.values()), (shapes, floors)
