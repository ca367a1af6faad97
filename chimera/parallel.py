"""Work shared among processes: ``-j N`` on one machine, torchrun's ranks across machines.

``predict`` and ``evaluate`` start their ``-j`` workers through :func:`process_pool`
(spawned, so CUDA and the extension start clean in each; the CPU threads are divided among
them). Under torchrun (``WORLD_SIZE`` > 1) every rank runs the command and takes its share
(:func:`balanced_shares`) of the same list; inside :func:`joined`, :func:`sum_over_ranks`
adds up per-rank counts over gloo, which also holds a rank that finished early until all
have (torchrun stops every rank as soon as one exits with an error).
"""
from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long a rank waits for the others at the end: shares are balanced by size, but one
# long file can still keep a rank busy for hours.
RANK_TIMEOUT = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0      # rank on this machine: which GPU it takes

    @property
    def distributed(self) -> bool:
        return self.world > 1


def torchrun_rank() -> Rank:
    """This process's place among torchrun's (RANK, WORLD_SIZE, LOCAL_RANK); one of one without."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_for(device: str, local: int) -> str:
    """`device` for the process of local rank `local`: "auto" and "cuda" take one GPU each
    (round robin), an explicit "cuda:N" or "cpu" stays."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local % torch.cuda.device_count()}"
    return device


def balanced_shares(costs, n: int) -> list[list[int]]:
    """Indices of `costs` in `n` shares of about equal total cost (largest first, each to the
    share that holds least; ties by index), each share in index order. Every index is in
    exactly one share, and the result depends only on `costs`, so every rank computes it."""
    shares, loads = [[] for _ in range(n)], [0] * n
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        k = min(range(n), key=lambda r: (loads[r], r))
        shares[k].append(i)
        loads[k] += costs[i]
    return [sorted(s) for s in shares]


# A terminated worker that has not exited this long after SIGTERM dies of SIGALRM: its exit
# can be lost where Python code runs inside a C callback (signals_deferred keeps soundfile's
# writes out of that; other libraries may not), and Pool.terminate waits for every worker for ever.
UNWIND_SECONDS = 10


def _exit_on_sigterm(signum, frame):
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(UNWIND_SECONDS)
    raise SystemExit(128 + signum)


def _start_worker(init, threads):
    # Pool.terminate sends SIGTERM: a worker that unwinds (instead of dying on the spot)
    # removes what its task was writing and unregisters its semaphores (tqdm's lock), which
    # otherwise show up as "leaked semaphore" warnings after the one-line error
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    torch.set_num_threads(threads)
    if init is not None:
        init()


@contextlib.contextmanager
def process_pool(jobs: int, init=None):
    """A pool of `jobs` spawned processes for a ``with`` block; each calls `init()` (e.g. to
    set up logging; it must be picklable) and gets an equal part of this process's CPU
    threads. The workers finish their tasks and exit when the block ends (closed and joined:
    terminated ones leave "leaked semaphore" warnings), and are terminated when it raises
    (an error, Ctrl-C). They ignore Ctrl-C from the start: the main process answers it."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    threads = max(1, torch.get_num_threads() // jobs)
    with _sigint_ignored():  # inherited: a worker still importing printed its own traceback
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_start_worker, initargs=(init, threads))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored inside (in the main thread; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if before is None else before)  # None: set outside Python


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C (SIGINT) and SIGTERM noted inside, and delivered again once the block ends: for
    C code that calls back into Python (soundfile writing to a file object), where the
    exception a handler raises is printed by cffi and dropped (a -j worker then went on
    instead of exiting). Nothing is deferred outside the main thread, which alone handles
    signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    before = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for s in dict.fromkeys(noted):
            signal.raise_signal(s)  # its own handler, here, outside the C call


@contextlib.contextmanager
def joined(rank: Rank):
    """Join torchrun's ranks in a gloo group for the block (nothing without torchrun)."""
    if not rank.distributed:
        yield
        return
    dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world, timeout=RANK_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def sum_over_ranks(value: int, rank: Rank) -> int:
    """`value` summed over torchrun's ranks inside :func:`joined` (gloo all-reduce: it waits
    until every rank gets here); `value` itself without torchrun."""
    if not rank.distributed:
        return value
    total = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(total)
    return int(total)
