"""tools/widen_model.py: a wider model that computes what the trained one computed, whose new
units learn."""
import pytest
import torch

from chimera.models import SeparationModel, load_checkpoint, preset, save_checkpoint
from chimera.objectives import objective
from tools import widen_model


def trained_like(layers=2, hidden=6, seed=0, **overrides):
    """A small Chimera++ model with every weight random (no zero that could hide a wrong copy)."""
    torch.manual_seed(seed)
    cfg = preset("chimerapp", "small", hidden=hidden, layers=layers, embedding_dim=3,
                 stft=dict(sample_rate=8000, n_fft=64, hop_length=16, window="sqrt_hann"),
                 source_names=["vocals", "accompaniment"], **overrides)
    model = SeparationModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("features."):
                p.uniform_(-0.5, 0.5)
        model.features.mean.uniform_(-1, 1)
        model.features.std.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("layers", [1, 3])
def test_the_widened_model_computes_the_same_masks_and_embeddings(layers):
    model = trained_like(layers)
    wide = widen_model.widen(model, 11, torch.Generator().manual_seed(1))
    assert wide.config.hidden == 11 and wide.trunk.output_size == 22
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 800, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), wide(x)
    torch.testing.assert_close(b.masks, a.masks, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.embedding, a.embedding, rtol=1e-5, atol=1e-6)


def test_the_new_units_are_active_and_learn():
    model = trained_like(2)
    wide = widen_model.widen(model, 9, torch.Generator().manual_seed(1)).train()
    x = torch.randn(2, 800, generator=torch.Generator().manual_seed(3))
    refs = torch.stack([0.3 * x, 0.7 * x], 1)
    out = wide(x)
    loss = objective("chimera", alpha=0.5, mi="tpsa")(out, x, refs)
    loss.backward()
    lstm = wide.trunk.lstms[1]
    old = model.config.hidden
    # the zero weights out of the new units get gradients, in the old units' recurrent
    # inputs and in the heads
    assert lstm.weight_hh_l0.grad[:old, old:].abs().sum() > 0
    assert wide.mask_head.linear.weight.grad[:, old:9].abs().sum() > 0
    assert wide.embedding_head.linear.weight.grad[:, 9 + old:].abs().sum() > 0


def test_the_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    src, dst = tmp_path / "m.pt", tmp_path / "wide.pt"
    save_checkpoint(src, trained_like(2))
    assert widen_model.main([str(src), str(dst), "--hidden", "8"]) == 0
    wide, _ = load_checkpoint(dst)
    assert wide.config.hidden == 8
    assert "hidden 6 -> 8" in capsys.readouterr().out


@pytest.mark.parametrize("model, hidden, why", [
    (lambda: trained_like(2), 4, "narrower"),
    (lambda: trained_like(2, residual=True), 8, "residual"),
])
def test_what_cannot_be_widened_is_refused(model, hidden, why):
    with pytest.raises(ValueError, match=why):
        widen_model.widen(model(), hidden)


def test_model_sizes_reports_the_median_training_step(monkeypatch, one_thread):
    # tools/model_sizes.py, which sized the candidate shapes a model is widened to: of the 4
    # timed steps (after a warm-up) the median, not the upper middle one
    from types import SimpleNamespace

    from tools import model_sizes
    clock = iter([0, 9, 10, 11, 20, 22, 30, 33, 40, 44, 50, 51])  # steps of 9 (warm-up), 1, 2, 3, 4 s; inference 1 s
    monkeypatch.setattr(model_sizes, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    params, step, infer = model_sizes.measure(4, 1, 2, 256, 64, batch=1, seconds=0.05)
    assert params > 0 and infer == 1
    assert step == 2.5
