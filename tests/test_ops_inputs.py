"""Inputs of the chimera.ops front end that used to fail with a misleading message."""
import pytest
import torch

import chimera.ops as ops
from chimera.ops import reference


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.bool])
def test_index_target_of_another_integer_dtype_is_named(dtype):
    """Was 'dense target must be (B, N, C), got [2, 5]' for int32 labels (e.g. from numpy)."""
    V = torch.randn(2, 5, 3)
    labels = torch.randint(0, 2, (2, 5)).to(dtype)
    g_vv, g_vy = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 2, dtype=torch.float64)
    calls = [lambda: ops.affinity_stats(V, labels, None, 2), lambda: reference.affinity_stats(V, labels, None, 2),
             lambda: ops.affinity_stats_backward(g_vv, g_vy, V, labels, None),
             lambda: reference.affinity_stats_backward(g_vv, g_vy, V, labels, None)]
    for call in calls:
        with pytest.raises(RuntimeError, match=r"index target must be int64 \(torch.long\)"):
            call()
    ops.affinity_stats(V, labels.long(), None, 2)  # int64 labels still work


@pytest.mark.parametrize("mode", ["interpolate", "argmax"])
def test_conjugate_view_codebook(mode):
    """codebook.conj() (a lazy conjugate view) was rejected by torch.view_as_real."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    phases = torch.randn(4, generator=gen, dtype=torch.complex64)
    want = ops.codebook_lookup(logits, phases.conj().resolve_conj(), mode)
    torch.testing.assert_close(ops.codebook_lookup(logits, phases.conj(), mode), want)
    torch.testing.assert_close(reference.codebook_lookup(logits, phases.conj(), mode), want)
    grads = []
    for resolve in (False, True):
        c = phases.clone().requires_grad_()
        cb = c.conj().resolve_conj() if resolve else c.conj()
        ops.codebook_lookup(logits, cb, mode).abs().sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_backend_of_a_device_type_without_an_entry_is_named(device):
    """Was a bare KeyError: 'mps'."""
    with pytest.raises(ValueError, match=rf"device type '{device.split(':')[0]}'.*cpu, cuda"):
        ops.backend(device)
    assert set(ops.backend("cpu").values()) <= {"cpp", "reference"}  # the known types still answer
