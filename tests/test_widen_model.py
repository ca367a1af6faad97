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


def test_the_command_refuses_in_one_line_what_it_cannot_or_must_not_write(tmp_path, capsys):
    # a missing or folder checkpoint and an output folder were tracebacks; an existing file,
    # the checkpoint itself included, was replaced without a word
    src = tmp_path / "m.pt"
    save_checkpoint(src, trained_like(2))
    before = src.read_bytes()
    (tmp_path / "taken.pt").write_bytes(b"keep me")
    (tmp_path / "a-file").write_bytes(b"")
    for argv, why in (([str(tmp_path / "missing.pt"), str(tmp_path / "w.pt")], "missing.pt: no such checkpoint file"),
                      ([str(tmp_path), str(tmp_path / "w.pt")], "is a folder, not a checkpoint file"),
                      ([str(src), str(tmp_path)], "is a folder, not a file name"),
                      ([str(src), str(tmp_path / "taken.pt")], r"taken.pt: exists \(use --force"),
                      ([str(src), str(src)], "is the checkpoint read"),
                      ([str(src), str(src), "--force"], "is the checkpoint read"),
                      ([str(src), str(tmp_path / "a-file" / "w.pt")], "a-file is not a writable folder"),
                      ([str(src), str(tmp_path / "w.pt"), "--hidden", "4"], "narrower")):
        with pytest.raises(SystemExit, match=f"^widen_model: .*{why}"):
            widen_model.main([*argv, "--hidden", "8"] if "--hidden" not in argv else argv)
    assert src.read_bytes() == before and (tmp_path / "taken.pt").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "m.pt", "taken.pt"]
    assert capsys.readouterr().out == ""
    # --force replaces it, with a model that computes what the checkpoint computes
    assert widen_model.main([str(src), str(tmp_path / "taken.pt"), "--hidden", "8", "--force"]) == 0
    wide, _ = load_checkpoint(tmp_path / "taken.pt")
    old, _ = load_checkpoint(src)
    x = torch.randn(2, 800, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(wide(x).masks, old(x).masks, rtol=1e-5, atol=1e-6)


def test_model_sizes_checks_every_shape_before_measuring(monkeypatch, capsys):
    # a bad second shape (or --threads 0) was a traceback after the first had been measured
    from tools import model_sizes
    measured = []
    monkeypatch.setattr(model_sizes, "measure", lambda *shape: measured.append(shape) or (1, 1.0, 1.0))
    for argv in (["8,1,2,256,64", "128,2"], ["8,1,2,256,64", "a,b,c,d,e"], ["8,1,2,256,64", "8.5,1,2,256,64"],
                 ["8,1,2,256,64", "8,1,0,256,64"], ["8,1,2,256,64", "8,1,2,256,512"], ["8,1,2,256,64", "0,1,2,256,64"],
                 ["8,1,2,256,64", "--threads", "0"]):
        with pytest.raises(SystemExit) as exc:
            model_sizes.main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'128,2': expected hidden,layers,embedding_dim,n_fft,hop" in err and "hop_length must be in" in err
    assert not measured
    assert model_sizes.main(["8,1,2,256,64", "16,2,4,512,128"]) == 0
    assert measured == [(8, 1, 2, 256, 64), (16, 2, 4, 512, 128)]


def test_model_sizes_float16_figure_is_the_checkpoint_files_size(tmp_path):
    from tools import model_sizes
    model = SeparationModel(model_sizes.config(24, 2, 6, 512, 128))
    params = sum(p.numel() for p in model.parameters())
    save_checkpoint(tmp_path / "m.pt", model, weights_dtype=torch.float16)
    size = (tmp_path / "m.pt").stat().st_size
    assert 2 * params < size < 2 * params + 40_000  # the configuration and float32 feature statistics
