"""`-j N` worker processes (chimera.parallel.process_pool, used by predict and evaluate):
the workers finish and exit on their own, are stopped cleanly on an error or Ctrl-C, leave
Ctrl-C to the main process from the start; counts below 1 are refused when parsed."""
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from chimera import evaluate as ev
from chimera.cli import build_parser
from chimera.models import StftConfig
from chimera.parallel import process_pool

ROOT = Path(__file__).resolve().parents[1]


def _sigint_disposition(_):
    return signal.getsignal(signal.SIGINT)


def test_workers_finish_and_exit_on_their_own():
    with process_pool(2) as pool:
        assert pool.map(abs, range(-3, 1), chunksize=1) == [3, 2, 1, 0]
        workers = list(pool._pool)
    # closed and joined, not terminated (exit code -SIGTERM): terminated workers left
    # "leaked semaphore" warnings
    assert [w.exitcode for w in workers] == [0, 0]


def test_workers_ignore_ctrl_c_from_the_start():
    # without init: a worker still importing used to get Ctrl-C itself (a traceback each)
    with process_pool(2) as pool:
        dispositions = pool.map(_sigint_disposition, range(4), chunksize=1)
    assert dispositions == [signal.SIG_IGN] * 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the main process's own is back


def test_jobs_below_one_are_refused_when_parsed(capsys):
    # -j 0 and -j -3 ran as -j 1; --threads 0 was ignored, --threads -1 blamed the recipe
    for argv, option in ((["predict", "x.wav", "-j", "0"], "-j/--jobs"),
                         (["evaluate", "data", "--jobs", "-3"], "-j/--jobs"),
                         (["train", "r.toml", "--threads", "0"], "--threads")):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(f"error: argument {option}: must be at least 1, got {argv[-1]}"), err
    assert build_parser().parse_args(["predict", "x.wav", "-j", "3"]).jobs == 3


_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from chimera.parallel import process_pool

    _held = []

    def hold_a_lock(folder):
        # a semaphore made in the worker, as tqdm's lock is in predict's workers
        _held.append(multiprocessing.get_context("spawn").Lock())
        open(os.path.join(folder, str(os.getpid())), "w").close()
        return True

    def hold_and_wait(folder):
        hold_a_lock(folder)
        time.sleep(120)

    if __name__ == "__main__":
        how, folder = sys.argv[1:]
        if how == "done":
            with process_pool(2) as pool:
                pool.map(hold_a_lock, [folder] * 2, chunksize=1)
        else:
            try:
                with process_pool(2) as pool:
                    pool.map_async(hold_and_wait, [folder] * 2, chunksize=1)
                    while len(os.listdir(folder)) < 2:
                        time.sleep(0.05)
                    raise RuntimeError("stop")
            except RuntimeError:
                pass
        print("ok")
""")


@pytest.mark.parametrize("how", ["done", "error"])
def test_no_leaked_semaphores_when_done_or_stopped(tmp_path, how):
    # done: terminated workers (the warning in some runs: a worker that read the pool's
    # stop sentinel first exited cleanly); error, Ctrl-C: killed by SIGTERM (every run)
    script = tmp_path / "pool.py"
    script.write_text(_SCRIPT)
    (tmp_path / "held").mkdir()
    start = time.monotonic()
    run = subprocess.run([sys.executable, str(script), how, str(tmp_path / "held")], capture_output=True, text=True,
                         cwd=ROOT, timeout=100)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr
    assert "leaked semaphore" not in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert time.monotonic() - start < 60  # stopped, not waited for


def test_evaluate_starts_no_more_workers_than_tracks(tmp_path, monkeypatch):
    pytest.importorskip("museval")
    folder = tmp_path / "data" / "only"
    folder.mkdir(parents=True)
    t = np.arange(2 * 8000) / 8000
    vocals = np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, 1)
    acc = 0.1 * np.random.default_rng(0).standard_normal(vocals.shape)
    for name, x in (("vocals", vocals), ("accompaniment", acc), ("mixture", vocals + acc)):
        sf.write(folder / f"{name}.wav", x.astype(np.float32), 8000, subtype="FLOAT")

    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was started for one track")

    monkeypatch.setattr(ev, "process_pool", no_pool)
    results = ev.evaluate(tmp_path / "data", ["vocals", "accompaniment"], oracle="mixture", stft=StftConfig(),
                          jobs=4)
    assert [t["track"] for t in results["tracks"]] == ["only"]
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        ev.evaluate(tmp_path / "data", ["vocals", "accompaniment"], oracle="mixture", stft=StftConfig(), jobs=0)


def test_a_worker_that_loses_its_sigterm_exit_still_dies(tmp_path):
    """The SystemExit a terminated worker unwinds with can be lost (raised inside a C callback,
    which cffi prints and drops): the worker went on, and Pool.terminate waited for ever (a
    Ctrl-C with -j hung). It dies of SIGALRM UNWIND_SECONDS after SIGTERM instead. In a
    subprocess, which the old code never finished."""
    code = textwrap.dedent("""
        import time
        from chimera.parallel import UNWIND_SECONDS, process_pool

        def swallow(_):
            while True:
                try:
                    time.sleep(60)
                except BaseException:
                    pass

        if __name__ == "__main__":
            t0 = time.monotonic()
            try:
                with process_pool(1) as pool:
                    pool.map_async(swallow, [0])
                    time.sleep(2)  # the worker is in its task
                    raise RuntimeError("stop")
            except RuntimeError:
                pass
            print(round(time.monotonic() - t0 - 2), UNWIND_SECONDS)
    """)
    script = tmp_path / "swallow.py"  # a file: spawned workers import the task from it
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    waited, unwind = map(int, run.stdout.split())
    assert unwind - 1 <= waited <= unwind + 5  # (at once: the task never ran)
