"""`chimera predict` on long files: peak RSS and wall time against the file's length.

Full run (CHIMERA_BENCH_FULL=1): 1-minute and 10-minute stereo 44.1 kHz files with the
bundled model. Goal: the 10-minute file's peak RSS at most 1.25x the 1-minute file's and
under 1 GB; time about linear in length. The real-time factor (processing time / audio
duration) is reported in extra_info. Default (CI smoke run): 2 s and 6 s files.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from benchutil import FULL

DURATIONS = (60, 600) if FULL else (2, 6)
RATE = 44100
_results = {}


def _model_path(tmp_dir):
    from chimera.pretrained import default_model_path
    path = default_model_path()
    if os.path.exists(path):
        return path
    # no bundled model yet: an untrained one of the same kind measures the same pipeline
    from chimera.models import SeparationModel, preset, save_checkpoint
    path = os.path.join(tmp_dir, "untrained.pt")
    save_checkpoint(path, SeparationModel(preset("chimerapp", "small", stft=dict(
        sample_rate=22050, n_fft=1024, hop_length=256, window="sqrt_hann"), source_names=["vocals", "accompaniment"])))
    return path


def _write_noise(path, seconds):
    """Stereo white noise written block by block (the benchmark must not hold it all)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as f:
        left = seconds * RATE
        while left > 0:
            n = min(left, 10 * RATE)
            f.write((rng.standard_normal((n, 2)) * 0.1).astype(np.float32))
            left -= n


RUNNER = """
import sys
from chimera.cli import main
rc = main(sys.argv[1:])
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print('PEAK_KB', line.split()[1], file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize("seconds", DURATIONS)
def test_predict_long_file(benchmark, tmp_path, seconds):
    src = tmp_path / f"mix{seconds}.wav"
    _write_noise(src, seconds)
    model = _model_path(tmp_path)

    def run():
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", RUNNER, "predict", str(src), "--model", model, "--out",
                              str(tmp_path / "sep"), "--force", "--quiet"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        peak = int(out.stderr.split("PEAK_KB")[1].split()[0]) / 1024
        return time.perf_counter() - t0, peak

    wall, peak = benchmark.pedantic(run, rounds=1, iterations=1)
    _results[seconds] = (wall, peak)
    benchmark.group = "predict: wall time per file length"
    benchmark.extra_info.update(seconds=seconds, peak_rss_mib=round(peak, 1), real_time_factor=round(wall / seconds, 3))
    print(f"\npredict {seconds:4d} s stereo 44.1 kHz: {wall:6.1f} s wall, RTF {wall / seconds:.3f}, "
          f"peak RSS {peak:.0f} MiB")
    if len(_results) == 2:
        (s1, (w1, p1)), (s2, (w2, p2)) = sorted(_results.items())
        print(f"peak RSS ratio {p2 / p1:.2f} (goal <= 1.25), time ratio {w2 / w1:.2f} for {s2 / s1:.0f}x the length")
