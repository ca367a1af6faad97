"""Running the external programs (speech engines, fluidsynth, ffmpeg) and the one error
type of the data tool."""
from __future__ import annotations

import subprocess


class DataError(RuntimeError):
    """Material missing or a program failed: the message says which and what to install."""


def run(cmd: list[str], what: str, timeout: float = 120) -> str:
    """Run `cmd`; its standard output, or a DataError saying what failed."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise DataError(f"{cmd[0]} not found: install it (make demo-data does)") from exc
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"{what}: timed out") from exc
    if r.returncode != 0:
        raise DataError(f"{what}: {cmd[0]} failed ({r.returncode}): {r.stderr.strip()[:300]}")
    return r.stdout
