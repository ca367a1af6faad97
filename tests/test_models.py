import copy
import io
import math
import subprocess
import sys

import pytest
import torch

from chimera.models import (
    PRESETS, BLSTMTrunk, EmbeddingHead, LogMagnitude, MaskHead, ModelConfig, SeparationModel, StftConfig,
    apply_masks, fit_statistics, flatten_bins, make_mask_head, preset,
)
from chimera.objectives import objective, si_sdr
from chimera.separate import Separator
from testutil import ROOT, cuda

STFT = StftConfig(sample_rate=8000, n_fft=128, hop_length=32)
TINY = dict(hidden=16, layers=2, stft=STFT)


pytestmark = pytest.mark.usefixtures("one_thread")


def tone_and_noise(seconds=1.0, sr=8000, seed=0):
    """(1, 2, L): a harmonic tone below 1.2 kHz and noise bursts above 2 kHz."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    t = torch.arange(n) / sr
    tone = sum(0.3 / k * torch.sin(2 * math.pi * 220 * k * t) for k in range(1, 6))
    W = torch.fft.rfft(torch.randn(n, generator=g))
    W[: int(2000 * n / sr)] = 0
    noise = 0.3 * torch.fft.irfft(W, n) * ((t * 4) % 1 < 0.5).float()
    return torch.stack([tone, noise])[None]


# ------------------------------------------------------------------ shapes and gradients

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_shapes_and_gradient_flow_into_every_head(name):
    model = SeparationModel(preset(name, **TINY))
    B, L = 2, 1000
    sources = torch.randn(B, 2, L)
    mix = sources.sum(1)
    out = model(mix)
    F, T = STFT.n_freq, L // STFT.hop_length + 1
    assert out.mixture_spec.shape == (B, F, T) and out.mixture_spec.is_complex()
    assert out.embedding.shape == (B, T * F, 20)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(B, T * F))
    if name == "dc":
        assert out.masks is None and out.estimates is None
        loss = objective("dc")(out, mix, sources)
    else:
        assert out.masks.shape == (B, 2, F, T)
        assert out.masks.is_complex() == (name in ("chimerapp-phasebook", "chimerapp-combook"))
        torch.testing.assert_close(out.estimates, out.masks * out.mixture_spec.unsqueeze(1))
        loss = objective("chimera", alpha=0.5, mi="csa")(out, mix, sources)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    heads = [m for m in (model.embedding_head, model.mask_head) if m is not None]
    assert len(heads) == (1 if name == "dc" else 2)


def test_paper_sizes():
    for name in PRESETS:
        cfg = preset(name, "paper")
        assert (cfg.layers, cfg.hidden, cfg.embedding_dim) == (4, 600, 20)
    assert preset("chimera").mask_input == "embedding"
    assert preset("chimerapp").mask_input == "trunk"
    assert preset("chimerapp-phasebook").mask == "phasebook"
    assert preset("chimerapp-combook").mask == "combook"
    assert preset("dc").mask is None
    for name, fn in PRESETS.items():
        assert fn.__doc__ and any(y in fn.__doc__ for y in ("2016", "2017", "2018", "2019")), name


def test_preset_overrides_and_errors():
    cfg = preset("chimerapp", n_sources=4, source_names=["bass", "drums", "other", "vocals"],
                 stft={"sample_rate": 44100, "n_fft": 1024, "hop_length": 256, "window": "hann"})
    assert cfg.stft.n_fft == 1024 and cfg.source_names == ("bass", "drums", "other", "vocals")
    with pytest.raises(ValueError, match="unknown model"):
        preset("tasnet")
    with pytest.raises(ValueError, match="unknown size"):
        preset("dc", "huge")
    with pytest.raises(ValueError, match="unknown override"):
        preset("dc", hiden=3)


def test_config_round_trip_and_validation():
    cfg = preset("chimerapp-phasebook", "paper", mask_options={"n_phases": 8})
    d = cfg.to_dict()
    assert isinstance(d["stft"], dict) and isinstance(d["source_names"], list)
    assert ModelConfig.from_dict(d) == cfg
    assert cfg.complex_mask and not preset("chimerapp").complex_mask
    with pytest.raises(ValueError, match="unknown mask"):
        ModelConfig(mask="relu")
    with pytest.raises(ValueError, match="source names"):
        ModelConfig(n_sources=3, source_names=("a", "b"))
    with pytest.raises(ValueError, match="embedding head"):
        ModelConfig(embedding_dim=0, mask=None)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**d, "colour": "red"})
    for bad in (5, [("hidden", 8)]):  # "'int' object is not iterable"; a list of pairs was read as a dict
        with pytest.raises(TypeError, match="ModelConfig: expected a dict, got"):
            ModelConfig.from_dict(bad)
    with pytest.raises(ValueError, match="window"):
        StftConfig(window="kaiser")
    with pytest.raises(ValueError, match="hop_length"):
        StftConfig(n_fft=64, hop_length=128)


def test_config_rejects_wrong_types_and_unusable_values():
    """Each of these was accepted, and failed later inside torch (a float hidden size), in the
    resampler (a string rate), at the inverse STFT (hop = n_fft) or wrote outside the output
    folder (a source name with a path)."""
    for bad, match in [(dict(hidden=128.0), "hidden must be an integer"), (dict(layers=True), "layers"),
                       (dict(embedding_dim=2.5), "embedding_dim"), (dict(floor_db=float("nan")), "floor_db"),
                       (dict(residual="no"), "residual"), (dict(source_names="ab"), "list of names"),
                       (dict(source_names=["a", "a"]), "must differ"), (dict(source_names=["../a", "b"]), "file name"),
                       (dict(source_names=["", "b"]), "file name"), (dict(mask_options=None), "mask_options"),
                       (dict(mask="magbook", mask_options={"n_phases": 3}), "takes the options"),
                       (dict(mask="combook", mask_options={"n_entries": 0}), "n_entries"),
                       (dict(mask="phasebook", mask_options={"magbook": []}), "magbook")]:
        with pytest.raises((TypeError, ValueError), match=match):
            preset("chimerapp", **bad)
    for bad, match in [(dict(sample_rate="16000"), "sample_rate"), (dict(n_fft=256.5), "n_fft"),
                       (dict(hop_length=64.0), "hop_length"), (dict(n_fft=256, hop_length=256), "hop_length"),
                       (dict(n_fft=256, hop_length=129), "hop_length")]:
        with pytest.raises((TypeError, ValueError), match=match):
            StftConfig(**bad)
    assert StftConfig(n_fft=256, hop_length=128).hop_length == 128


def test_model_to_float64_keeps_the_phasebook():
    """Module.to(dtype) casts complex buffers to the real dtype: the phasebook kept only its
    cosines and a float64 model's masks were off by up to 1.7."""
    model = SeparationModel(preset("chimerapp-phasebook", **TINY)).eval()
    x = torch.randn(2, 800)
    masks = model(x).masks
    wide = SeparationModel(model.config)
    wide.load_state_dict(model.state_dict())
    wide = wide.eval().to(torch.float64)
    assert wide.mask_head.phasebook.dtype == torch.complex128
    torch.testing.assert_close(wide(x).masks, masks.to(torch.complex128), atol=1e-3, rtol=0)  # float32 rounding: ~4e-5


# ------------------------------------------------------------------ parts

def test_trunk_forget_bias_residual_and_dropout():
    trunk = BLSTMTrunk(10, 6, 3, dropout=0.5, residual=True)
    for lstm in trunk.lstms:
        for n, p in lstm.named_parameters():
            if n.startswith("bias_ih"):
                assert (p[6:12] == 1).all() and not (p[:6] == 1).all()
            elif n.startswith("bias_hh"):
                assert (p[6:12] == 0).all()
    x = torch.randn(2, 7, 10)
    trunk.eval()
    y = trunk(x)
    assert y.shape == (2, 7, 12)
    plain = BLSTMTrunk(10, 6, 3, residual=False).eval()
    plain.load_state_dict(trunk.state_dict())
    assert not torch.allclose(plain(x), y)
    torch.testing.assert_close(trunk(x), y)  # eval: no dropout
    trunk.train()
    assert not torch.allclose(trunk(x), y)


def test_embedding_head_activations():
    x = torch.randn(2, 5, 8)
    for act in ("tanh", "sigmoid"):
        v = EmbeddingHead(8, 3, 4, act)(x)
        assert v.shape == (2, 15, 4)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, 15))
        if act == "sigmoid":
            assert (v >= 0).all()
    with pytest.raises(ValueError, match="activation"):
        EmbeddingHead(8, 3, 4, "relu")


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_embedding_head_inference_path_matches_training_path(act):
    # without autograd the head works in place; it must give what the autograd path gives,
    # zero rows (floored norm) and NaN included
    torch.manual_seed(0)
    head = EmbeddingHead(8, 3, 4, act)
    x = torch.randn(2, 5, 8)
    x[0, 1] = float("nan")
    with torch.no_grad():
        head.linear.bias[:4] = -1e4 if act == "sigmoid" else 0.0   # bin 0: sigmoid gives 0 everywhere
        head.linear.weight[:4] = 0.0
        fast = head(x)
    slow = head(x)
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-6, atol=1e-7, equal_nan=True)
    assert torch.isnan(fast[0, 3:6]).all() and torch.isfinite(fast[1]).all()
    with torch.inference_mode():
        torch.testing.assert_close(head(x), slow.detach(), rtol=1e-6, atol=1e-7, equal_nan=True)


def test_mask_head_ranges():
    x = 20 * torch.randn(2, 5, 8)
    ranges = {"sigmoid": (0, 1), "softmax": (0, 1), "doubled_sigmoid": (0, 2), "clipped_relu": (0, 2)}
    for kind, (lo, hi) in ranges.items():
        head = MaskHead(8, 3, 4, kind)
        m = head(x)
        assert m.shape == (2, 4, 3, 5) and not m.is_complex()
        assert m.min() >= lo and m.max() <= hi
        assert m.max() > hi - 0.05, kind  # large inputs reach the top of the range
    torch.testing.assert_close(MaskHead(8, 3, 4, "softmax")(x).sum(1), torch.ones(2, 3, 5))
    clipped = MaskHead(8, 3, 4, "clipped_relu")(x)
    assert (clipped == 0).any() and (clipped == 2).any()
    assert isinstance(make_mask_head("sigmoid", 8, 3, 2), MaskHead)
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask_head("tanh", 8, 3, 2)
    with pytest.raises(ValueError, match="no options"):
        make_mask_head("sigmoid", 8, 3, 2, codebook_size=4)


@pytest.mark.parametrize("kind", ["sigmoid", "doubled_sigmoid", "clipped_relu", "softmax"])
def test_mask_head_inference_equals_training_path(kind):
    # Without a graph the activation runs in place on the linear output: same masks, and
    # with one the head still has its gradient.
    head = MaskHead(8, 3, 4, kind)
    x = 3 * torch.randn(2, 5, 8)
    with torch.no_grad():
        inferred = head(x)
    trained = head(x)
    assert trained.requires_grad
    torch.testing.assert_close(inferred, trained.detach(), rtol=0, atol=0)
    trained.square().sum().backward()
    assert head.linear.weight.grad.abs().sum() > 0


def test_apply_masks_equals_the_complex_product():
    spec = torch.randn(2, 7, 9, dtype=torch.complex64)
    real = torch.rand(2, 3, 7, 9)
    cplx = torch.randn(2, 3, 7, 9, dtype=torch.complex64)
    for masks in (real, cplx, real.double()):
        out = apply_masks(masks, spec)
        expect = masks * spec.unsqueeze(1)
        assert out.dtype == expect.dtype and out.shape == (2, 3, 7, 9)
        torch.testing.assert_close(out, expect, rtol=1e-6, atol=1e-7)
    torch.autograd.gradcheck(lambda m: torch.view_as_real(apply_masks(m, spec.to(torch.complex128))),
                             (real.double().detach().requires_grad_(),))


@pytest.mark.parametrize("kind", ["magbook", "phasebook", "combook"])
def test_codebook_heads_from_factory(kind):
    head = make_mask_head(kind, 8, 3, 2)
    m = head(torch.randn(2, 5, 8))
    assert m.shape == (2, 2, 3, 5)
    assert m.is_complex() == (kind != "magbook")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["magbook", "phasebook", "combook"])
def test_codebook_heads_run_in_half_precision(kind, dtype):
    """A .half() magbook/phasebook head handed codebook_lookup a float16 codebook (TypeError) and
    a combook head a complex32 (float16) or no complex view at all (bfloat16): the op takes such
    logits with a float32 codebook only. Against the same rounded weights in float64."""
    torch.manual_seed(0)
    head = make_mask_head(kind, 8, 3, 2).to(dtype)
    wide = copy.deepcopy(head).double()
    x = torch.randn(2, 5, 8).to(dtype)
    masks = head(x)
    want = wide(x.double())
    torch.testing.assert_close(masks.to(want.dtype), want, atol=32 * torch.finfo(dtype).eps, rtol=0)
    masks.abs().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()
               for p in head.parameters())
    model = SeparationModel(preset("chimerapp", mask=kind, **TINY)).to(dtype).eval()
    assert torch.isfinite(model(torch.randn(1, 800)).masks).all()


def test_embedding_head_with_a_frozen_weight_trains_its_bias():
    """With the weight frozen and an input that needs no gradient, the head took its in-place
    inference path while the bias still needed a gradient: backward raised (a tensor it needed
    was modified in place)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    full = EmbeddingHead(8, 3, 4, "sigmoid")
    frozen = copy.deepcopy(full)
    frozen.linear.weight.requires_grad_(False)
    w = torch.randn(2, 15, 4)
    (frozen(x) * w).sum().backward()
    (full(x) * w).sum().backward()
    assert frozen.linear.weight.grad is None
    torch.testing.assert_close(frozen.linear.bias.grad, full.linear.bias.grad, rtol=0, atol=0)


def test_model_refuses_a_config_of_another_type():
    with pytest.raises(TypeError, match="SeparationModel: config must be a ModelConfig or a dict, got 'chimerapp'"):
        SeparationModel("chimerapp")


def test_features_floor_and_statistics():
    feats = LogMagnitude(4, floor_db=-60.0)
    mag = torch.zeros(1, 4, 6)
    mag[0, 1, 2] = 10.0  # 20 dB peak, the rest silence or padding
    out = feats(mag)
    assert out.shape == (1, 6, 4)
    assert out.max().item() == pytest.approx(20.0) and out.min().item() == pytest.approx(-40.0)
    assert torch.isfinite(feats(torch.zeros(1, 4, 6))).all()

    model = SeparationModel(preset("chimerapp", **TINY))
    data = [torch.randn(2, 800) * s for s in (0.1, 1.0, 3.0)]
    mean, std = fit_statistics(model, data)
    assert mean.shape == std.shape == (STFT.n_freq,)
    norm = torch.cat([model.features(model.spectrogram(x).abs()) for x in data], 1)  # (2, T, F)
    torch.testing.assert_close(norm.mean((0, 1)), torch.zeros(STFT.n_freq), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.std((0, 1), unbiased=False), torch.ones(STFT.n_freq), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="no mixtures"):
        fit_statistics(model, [])


def test_flatten_bins_is_frequency_fastest():
    x = torch.arange(2 * 3 * 4).reshape(2, 3, 4)  # (B, F, T)
    flat = flatten_bins(x)
    assert flat.shape == (2, 12)
    for t in range(4):
        for f in range(3):
            assert flat[1, t * 3 + f] == x[1, f, t]


# ------------------------------------------------------------------ forward

def test_forward_rejects_bad_shapes():
    model = SeparationModel(preset("chimera", **TINY))
    with pytest.raises(ValueError, match="too short"):
        model(torch.randn(1, 40))
    with pytest.raises(ValueError, match="batch, samples"):
        model(torch.randn(900))


@pytest.mark.parametrize("name", ["chimerapp", "dc"])
def test_skipping_the_embedding_keeps_the_masks(name):
    model = SeparationModel(preset(name, **TINY)).eval()
    x = torch.randn(2, 900)
    full, lean = model(x), model(x, need_embedding=False)
    if model.mask_head is not None:
        assert lean.embedding is None
        torch.testing.assert_close(lean.masks, full.masks, rtol=0, atol=0)
    else:  # nothing to separate with but the embedding: it is always computed
        torch.testing.assert_close(lean.embedding, full.embedding, rtol=0, atol=0)


def test_small_chimerapp_overfits_one_mixture():
    torch.manual_seed(0)
    sources = tone_and_noise()  # 1 s at 8 kHz
    mix = sources.sum(1)
    model = SeparationModel(preset("chimerapp", stft=StftConfig(8000, 256, 64)))
    fit_statistics(model, [mix])
    loss_fn = objective("chimera", alpha=0.975, mi="tpsa")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    separate = Separator(model, device="cpu").separate_batch
    before = si_sdr(separate(mix), sources)
    for _ in range(60):
        loss = loss_fn(model(mix), mix, sources)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = si_sdr(separate(mix), sources)
    assert (before < 10).all() and (after > 20).all(), (before, after)
    # the DC embeddings learnt the partition too
    kmeans = Separator(model, device="cpu", method="kmeans").separate_batch
    assert (si_sdr(kmeans(mix), sources).max(-1).values > 10).all()


def test_float64_input_and_dtype_errors():
    model = SeparationModel(preset("chimerapp", **TINY)).eval()
    x = torch.randn(1, 900)
    a, b = model(x), model(x.double())
    assert b.mixture_spec.dtype == torch.complex128
    torch.testing.assert_close(b.masks.float(), a.masks, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 900, dtype=torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_waveform_gives_the_float32_outputs(dtype):
    """torch's CPU FFT refused a float16/bfloat16 waveform (MKL FFT doesn't support Half)."""
    model = SeparationModel(preset("chimerapp", **TINY)).eval()
    x = torch.randn(2, 1000)
    half = x.to(dtype)
    out = model(half)
    assert out.mixture_spec.dtype == out.estimates.dtype == torch.complex64 and out.masks.dtype == torch.float32
    # float32 holds the half values exactly: the outputs are those of the same samples in float32
    _assert_same_output(out, model(half.float()))
    # and the rounding of the input is all that separates them from the unrounded waveform's:
    # each sample moves by at most u·|x| (u = eps / 2), so a bin by at most u·Σ w(n)|x(n)|
    # over its frame, plus float32's own rounding of the two FFTs
    u = torch.finfo(dtype).eps / 2
    bound = (u + 64 * torch.finfo(torch.float32).eps) * x.abs().max() * model.window.sum()
    assert (out.mixture_spec - model(x).mixture_spec).abs().max() <= bound


@pytest.mark.parametrize("name", ["chimerapp", "chimerapp-combook"])
def test_bfloat16_model_on_a_bfloat16_waveform(name):
    """A model cast to bfloat16 failed in torch's CPU FFT on its own dtype's waveform, and so did
    fit_statistics on it. Against a float32 model holding the same rounded weights."""
    model = SeparationModel(preset(name, **TINY)).eval()
    x = torch.randn(2, 1000)
    fit_statistics(model, [x])
    low = copy.deepcopy(model).to(torch.bfloat16)
    fit_statistics(low, [x])  # the same float32 statistics, rounded
    assert torch.equal(low.features.mean, model.features.mean.bfloat16())
    assert torch.equal(low.features.std, model.features.std.bfloat16())
    wide = SeparationModel(model.config).eval()
    wide.load_state_dict(low.state_dict())
    wave = x.bfloat16()
    got, want = low(wave), wide(wave.float())
    assert got.embedding.dtype == torch.bfloat16 and got.mixture_spec.dtype == torch.complex64
    torch.testing.assert_close(got.mixture_spec, want.mixture_spec, rtol=0, atol=0)  # both in float32
    # normalised features, unit embeddings and masks in [0, 2] (magnitude 2 for the combook) are
    # O(1); the bfloat16 model rounds each layer's output to 8 significant bits (u = eps / 2):
    # a few such roundings, each at most u·2, are 4·eps
    eps = torch.finfo(torch.bfloat16).eps
    for name in ("embedding", "masks"):
        a, b = getattr(got, name), getattr(want, name)
        assert torch.isfinite(torch.view_as_real(a) if a.is_complex() else a).all()
        assert (a.to(b.dtype) - b).abs().max() <= 4 * eps, name
    assert ((got.estimates - want.estimates).abs() <= 4 * eps * want.mixture_spec.abs().unsqueeze(1)).all()


@pytest.mark.parametrize("samples", [0, 1, 64])
def test_waveform_shorter_than_a_frame_is_a_clear_error(samples):
    model = SeparationModel(preset("chimerapp", **TINY)).eval()
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(ValueError, match=f"input of {samples} samples is too short for n_fft=128"):
            model(torch.zeros(2, samples, dtype=dtype))


@pytest.mark.parametrize("name", ["chimerapp", "chimera", "chimerapp-combook"])
def test_nan_waveform_propagates_to_its_own_item(name):
    model = SeparationModel(preset(name, **TINY)).eval()
    x = torch.randn(2, 1000)
    x[0, 500] = float("nan")
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = model(x)
        for field in ("mixture_spec", "embedding", "masks", "estimates"):
            v = getattr(out, field)
            assert v[0].isnan().any() and torch.isfinite(v[1]).all(), (field, grad)


@cuda
def test_cuda_forward_matches_cpu():
    model = SeparationModel(preset("chimerapp-combook", **TINY)).eval()
    x = torch.randn(2, 900)
    ref, ref_half = model(x), model(x.half())
    out = model.cuda()(x.cuda())
    torch.testing.assert_close(out.masks.cpu(), ref.masks, atol=1e-4, rtol=1e-4)
    # a float16 waveform's STFT is taken in float32 on the GPU too (cuFFT's float16 is another rounding)
    torch.testing.assert_close(model(x.cuda().half()).masks.cpu(), ref_half.masks, atol=1e-4, rtol=1e-4)
    assert Separator(model, device="cuda", misi_iters=1).separate_batch(x.cuda()).device.type == "cuda"


def test_unit_norm_is_normalize_with_its_gradient():
    # Forward and gradient against F.normalize (float64), rows at zero and under the floor
    # included; gradcheck of the fused backward.
    from chimera.models.embedding_head import unit_norm
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 50, 6, dtype=torch.float64, generator=g)
    v[0, :4] = 0.0
    v[1, :3] *= 1e-9
    a = v.clone().requires_grad_()
    b = v.clone().requires_grad_()
    ya, yb = unit_norm(a, 1e-8), torch.nn.functional.normalize(b, dim=-1, eps=1e-8)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-15)
    w = torch.randn(3, 50, 6, dtype=torch.float64, generator=g)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: unit_norm(x, 1e-8), (torch.randn(2, 7, 4, dtype=torch.float64,
                                                                            requires_grad=True),))
    x = torch.randn(2, 5, 3).requires_grad_()
    assert unit_norm(x).dtype == torch.float32 and torch.isnan(unit_norm(torch.full((1, 1, 3), float("nan")))).all()


# ------------------------------------------------------------------ torch.export / torch.compile

def _assert_same_output(got, want):
    assert type(got) is type(want) and got.stft == want.stft and got.length == want.length
    for name in ("mixture_spec", "embedding", "masks", "estimates"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


_JIT_DEPRECATED = r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"


# torch's own notes while exporting an nn.LSTM and saving the program (the outputs are checked below)
@pytest.mark.filterwarnings("ignore:The tensor attributes .* were assigned during export:UserWarning")
@pytest.mark.filterwarnings("ignore:No complete tensor found in the group:UserWarning")
@pytest.mark.parametrize("name", ["chimerapp", "dc"])  # dc: embedding only, masks and estimates None
def test_exported_model_returns_the_eager_outputs(name):
    """torch.export.export failed: ModelOutput was no pytree node."""
    model = SeparationModel(preset(name, **TINY)).eval()
    x = torch.randn(2, 1000)
    want = model(x)
    program = torch.export.export(model, (x,))
    _assert_same_output(program.module()(x), want)
    if name == "chimerapp":  # the STFT settings go through the saved program's JSON
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        _assert_same_output(torch.export.load(buffer).module()(x), want)


@pytest.mark.filterwarnings("ignore:The tensor attributes .* were assigned during export:UserWarning")
@pytest.mark.filterwarnings("ignore:No complete tensor found in the group:UserWarning")
@pytest.mark.parametrize("name", ["chimerapp", "chimera", "chimerapp-combook"])
def test_export_with_a_dynamic_batch_and_length(name):
    """A dynamic number of samples failed: torch's nn.LSTM decomposition pins the number of
    frames (pytorch/pytorch#115092), the reshapes between T·F bins and T frames guarded on a
    divisibility of it, and the length went into the program as a constant."""
    model = SeparationModel(preset(name, **TINY)).eval()
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=STFT.n_fft // 2 + 1)},)
    program = torch.export.export(model, (torch.randn(2, 1000),), dynamic_shapes=dims)
    if name == "chimerapp":  # the custom BLSTM op and the length go through the saved program
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        program = torch.export.load(buffer)
    for shape in ((3, 777), (1, 2345)):
        x = torch.randn(shape)
        with torch.no_grad():  # the program's BLSTM op runs below autograd: torch's no-grad LSTM kernel
            _assert_same_output(program.module()(x), model(x))


# the trace's notes that it holds for the traced shape, and torch's deprecation of torch.jit
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", _JIT_DEPRECATED)
@pytest.mark.parametrize("name", ["chimerapp", "chimera", "dc"])
def test_traced_model_returns_the_eager_tensors(name):
    """torch.jit.trace failed: a ModelOutput is no value of a trace, and the heads' in-place
    inference path (taken by the sanity check, which traces again under no_grad) made another
    graph than the autograd path of the trace."""
    model = SeparationModel(preset(name, **TINY)).eval()
    traced = torch.jit.trace(model, torch.randn(2, 1000))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)  # no Python autograd.Function in the graph
    buffer.seek(0)
    x = torch.randn(2, 1000)
    want = model(x)
    want = [v for v in (want.mixture_spec, want.embedding, want.masks, want.estimates) if v is not None]
    for module in (traced, torch.jit.load(buffer)):
        got = module(x)
        assert isinstance(got, tuple) and len(got) == len(want)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings(_JIT_DEPRECATED)
@pytest.mark.parametrize("kind", ["embedding", "mask"])
def test_traced_heads_pass_the_sanity_check(kind):
    head = EmbeddingHead(8, 3, 4, "tanh") if kind == "embedding" else MaskHead(8, 3, 2, "doubled_sigmoid")
    x = torch.randn(2, 5, 8)
    traced = torch.jit.trace(head, x)  # raised "Graphs differed across invocations"
    y = torch.randn(2, 5, 8)
    torch.testing.assert_close(traced(y), head(y), rtol=0, atol=0)


def test_compiled_model_returns_the_eager_outputs():
    model = SeparationModel(preset("chimerapp", **TINY)).eval()
    x = torch.randn(2, 1000)
    _assert_same_output(torch.compile(model, backend="aot_eager")(x), model(x))


def test_model_output_registration_survives_a_reload():
    # A fresh interpreter: a reload leaves two ModelOutput classes, which other tests must not see.
    code = """if True:
        import importlib, warnings
        import torch
        import chimera.models.model as m
        from chimera.models import StftConfig, preset
        warnings.simplefilter("error", UserWarning)  # pytree warns when it overwrites a registration
        m = importlib.reload(m)
        warnings.resetwarnings()
        model = m.SeparationModel(preset("dc", hidden=8, layers=1, stft=StftConfig(8000, 128, 32))).eval()
        out = torch.export.export(model, (torch.randn(1, 500),)).module()(torch.randn(1, 500))
        assert type(out) is m.ModelOutput, type(out)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
