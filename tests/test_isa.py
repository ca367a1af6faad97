"""The CPU kernels' instruction-set paths (csrc/cpu/isa.h, chimera.ops.isa)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chimera import ops
from chimera.ops import _extension, isa, reference
from testutil import EXT_DISABLED

needs_ext = pytest.mark.skipif(EXT_DISABLED or _extension.module is None, reason="extension not in use")
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    env.update(extra)
    return env


def _capability_in_subprocess(value):
    code = "from chimera import ops; print(ops.cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=_env(CHIMERA_CPU_CAPABILITY=value))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), out.stderr


@needs_ext
def test_default_is_the_best_supported_path():
    supported = ops.supported_cpu_capabilities()
    assert supported[0] == "default"
    assert list(supported) == [c for c in isa.CAPABILITIES if c in supported]  # ordered, known names
    got, _ = _capability_in_subprocess("")
    assert got == supported[-1]


@needs_ext
@pytest.mark.parametrize("path", isa.CAPABILITIES)
def test_environment_variable_chooses_the_path(path):
    got, err = _capability_in_subprocess(path.upper() if path == "avx2" else path)  # case-insensitive
    if path in ops.supported_cpu_capabilities():
        assert got == path
        assert "Warning" not in err
    else:  # capped at the best supported, and said
        assert got == ops.supported_cpu_capabilities()[-1]
        assert f"CHIMERA_CPU_CAPABILITY={path}" in err and "supports at most" in err


@needs_ext
def test_unknown_environment_value_warns_and_uses_the_best():
    got, err = _capability_in_subprocess("sse9")
    assert got == ops.supported_cpu_capabilities()[-1]
    assert "CHIMERA_CPU_CAPABILITY=sse9 is not one of default, avx2, avx512" in err


@needs_ext
def test_set_and_restore():
    before = ops.cpu_capability()
    with ops.use_cpu_capability("default"):
        assert ops.cpu_capability() == "default"
    assert ops.cpu_capability() == before
    with pytest.raises(ValueError, match="one of default, avx2, avx512"):
        ops.set_cpu_capability("neon")
    unsupported = [c for c in isa.CAPABILITIES if c not in ops.supported_cpu_capabilities()]
    for name in unsupported:
        with pytest.raises(RuntimeError, match=f"{name} path is not"):
            ops.set_cpu_capability(name)
    assert ops.cpu_capability() == before


def test_without_extension_there_is_no_path():
    code = "from chimera import ops; print(ops.cpu_capability(), ops.supported_cpu_capabilities())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=_env(CHIMERA_DISABLE_EXT="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "()"]


def _vector_registers_per_path(so_path):
    """{path: set of vector register widths used by the functions of that path's copy}."""
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", so_path], capture_output=True, text=True,
                         check=True).stdout
    widths, current = {}, None
    for line in dis.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            found = re.search(r"chimera::cpu::(base|avx2|avx512)::", head.group(1))
            current = found.group(1) if found else None
            if current:
                widths.setdefault(current, set())
        elif current:
            widths[current].update(re.findall(r"%([xyz])mm", line))
    return widths


@needs_ext
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_each_path_is_compiled_for_its_instruction_set():
    """A path that lost its target (a pragma dropped, a body compiled outside the clones)
    would still pass every numeric test: the machine code says which ISA each copy uses."""
    widths = _vector_registers_per_path(_extension.module.__file__)
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        assert set(widths) == {"base"}
        return
    assert set(widths) == {"base", "avx2", "avx512"}
    assert widths["base"] <= {"x"}            # SSE2 only
    assert "y" in widths["avx2"] and "z" not in widths["avx2"]
    assert "z" in widths["avx512"]


def _all_ops(dtype):
    """Each CPU op, forward and backward, beside its float64 reference."""
    g = torch.Generator().manual_seed(1)
    V = torch.nn.functional.normalize(torch.randn(2, 3000, 20, generator=g, dtype=dtype), dim=-1)
    y = torch.randint(0, 3, (2, 3000), generator=g)
    w = torch.rand(2, 3000, generator=g, dtype=dtype)
    logits = torch.randn(700, 12, generator=g, dtype=dtype)
    book = torch.randn(12, 2, generator=g, dtype=dtype)
    grad_cb = torch.randn(700, 2, generator=g, dtype=dtype)
    frames = torch.randn(3, 40, 256, generator=g, dtype=dtype)
    window = torch.hann_window(256, dtype=dtype)
    gvv = torch.randn(2, 20, 20, generator=g, dtype=torch.float64)
    gvy = torch.randn(2, 20, 3, generator=g, dtype=torch.float64)
    cases = {
        "affinity_stats": (ops.affinity_stats, reference.affinity_stats, (V, y, w, 3)),
        "affinity_stats_backward": (ops.affinity_stats_backward, reference.affinity_stats_backward, (gvv, gvy, V, y, w)),
        "codebook_lookup": (torch.ops.chimera.codebook_lookup, reference.codebook_lookup_real, (logits, book, False, True)),
        "codebook_lookup_backward": (torch.ops.chimera.codebook_lookup_backward, reference.codebook_lookup_backward,
                                     (grad_cb, logits, book, False, True, [True, True])),
        "overlap_add": (ops.overlap_add, reference.overlap_add, (frames, window, 64, True, None)),
        "overlap_add_backward": (ops.overlap_add_backward, reference.overlap_add_backward,
                                 (torch.randn(3, 40 * 64, generator=g, dtype=dtype), window, 64, True, 40)),
    }
    return cases


def _double(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_op_on_every_path_matches_the_reference(cpu_path, dtype):
    tol = {torch.float32: 2e-5, torch.float64: 1e-11}[dtype]
    for name, (op, ref, args) in _all_ops(dtype).items():
        got = _flat(op(*args))
        want = _flat(ref(*_double(args)))
        for g_, w_ in zip(got, want):
            scale = w_.abs().max().clamp_min(1.0)
            err = (g_.double() - w_).abs().max() / scale
            assert err < tol, (name, cpu_path, dtype, float(err))
