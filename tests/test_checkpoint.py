import datetime
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from chimera.models import (
    CheckpointError, SeparationModel, StftConfig, fit_statistics, load_checkpoint, preset, save_checkpoint,
)
from chimera.models import checkpoint as ckpt
from testutil import cuda

STFT = StftConfig(sample_rate=8000, n_fft=128, hop_length=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name="chimerapp", **kw):
    model = SeparationModel(preset(name, hidden=8, layers=2, stft=STFT, source_names=("voice", "music"), **kw))
    fit_statistics(model, [torch.randn(2, 800)])
    return model


@pytest.mark.parametrize("name", ["dc", "chimera", "chimerapp", "chimerapp-phasebook", "chimerapp-combook"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = _model(name).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model)
    loaded, state = load_checkpoint(path)
    assert state is None and not loaded.training
    assert loaded.config == model.config and loaded.source_names == ("voice", "music")
    x = torch.randn(2, 700)
    a, b = model(x), loaded(x)
    assert torch.equal(a.embedding, b.embedding)
    if a.masks is not None:
        assert torch.equal(a.masks, b.masks)
    assert torch.equal(loaded.features.mean, model.features.mean)
    assert not torch.equal(loaded.features.std, torch.ones_like(loaded.features.std))


def test_half_precision_weights_halve_the_file_and_load_as_float32(tmp_path):
    model = SeparationModel(preset("chimerapp", hidden=32, layers=2, stft=STFT, source_names=("voice", "music")))
    fit_statistics(model, [torch.randn(2, 800)])
    model.eval()
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(full, model)
    save_checkpoint(half, model, weights_dtype=torch.float16)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    raw = torch.load(half, weights_only=True)
    assert raw["state_dict"]["mask_head.linear.weight"].dtype == torch.float16
    assert raw["state_dict"]["features.std"].dtype == torch.float32  # statistics stay exact
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.features.std, model.features.std)
    x = torch.randn(2, 700)
    a, b = model(x).masks, loaded(x).masks
    assert not torch.equal(a, b)  # rounded weights, not the originals
    torch.testing.assert_close(b, a, atol=5e-3, rtol=0)
    with pytest.raises(TypeError, match="floating dtype"):
        save_checkpoint(tmp_path / "bad.pt", model, weights_dtype=torch.int8)
    # a dtype's name (as a config or command line gives it) was an AttributeError
    with pytest.raises(TypeError, match="weights_dtype must be a floating dtype, got 'float16'"):
        save_checkpoint(tmp_path / "bad.pt", model, weights_dtype="float16")
    assert not (tmp_path / "bad.pt").exists()


def test_training_state_and_plain_weights_only_load(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(1, 600)).masks.sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, {"optimizer": opt.state_dict(), "step": 7, "history": [1.5, 1.25]})
    raw = torch.load(path, weights_only=True)  # no pickled classes anywhere
    assert raw["format"] == ckpt.FORMAT and raw["version"] == ckpt.VERSION
    assert raw["stft"] == {"sample_rate": 8000, "n_fft": 128, "hop_length": 32, "window": "hann"}
    assert raw["source_names"] == ["voice", "music"]
    assert torch.equal(raw["feature_stats"]["mean"], model.features.mean)
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
    loaded, state = load_checkpoint(path)
    assert state["step"] == 7 and state["history"] == [1.5, 1.25]
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    for p, q in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(p["exp_avg"], q["exp_avg"])


def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model())
    second = _model("chimerapp-combook")
    save_checkpoint(str(path), second)
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary left behind
    assert load_checkpoint(path)[0].config.mask == "combook"
    with pytest.raises(TypeError, match="SeparationModel"):
        save_checkpoint(path, torch.nn.Linear(2, 2))


def _expect_refusal(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    # one short line: torch.load's own messages run to paragraphs of advice
    assert "\n" not in message and len(message) < len(str(path)) + 400, message


def test_refuses_truncated_corrupt_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _model())
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_refusal(truncated, "corrupt, truncated")

    # flip bytes inside the largest tensor record: the zip may still open, the checksum must not match
    raw = torch.load(good, weights_only=True)
    weight = max(raw["state_dict"].values(), key=lambda t: t.numel())
    needle = weight.contiguous().view(torch.uint8).numpy().tobytes()[:64]
    pos = data.find(needle)
    assert pos > 0
    flipped = bytearray(data)
    for i in range(pos, pos + 16):
        flipped[i] ^= 0xFF
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(flipped))
    _expect_refusal(corrupt, "corrupt")

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    _expect_refusal(text, "cannot be read as a checkpoint \\(not a torch file\\)")

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _expect_refusal(empty, "empty or truncated")

    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: code, which is never unpickled
    _expect_refusal(pickled, "Python objects besides tensors")

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": raw["state_dict"]}, foreign)
    _expect_refusal(foreign, "not a chimera checkpoint")

    plain = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain)
    _expect_refusal(plain, "not a chimera checkpoint")

    _expect_refusal(tmp_path / "missing.pt", "no such")


def test_map_location_that_is_no_device_is_refused(tmp_path):
    """A torch.load-style dict (or an index, hubconf's device=0) was ignored: the model stayed on the CPU."""
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model())
    with pytest.raises(TypeError, match=r"map_location must be a device .* got \{'cuda:0': 'cpu'\}"):
        load_checkpoint(path, map_location={"cuda:0": "cpu"})
    meta, _ = load_checkpoint(path, map_location=torch.device("meta"))
    assert all(p.is_meta for p in meta.parameters())


def test_refuses_incompatible_files(tmp_path):
    model = _model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    raw = torch.load(path, weights_only=True)

    def write(**changes):
        return _edited(tmp_path, raw, **changes)

    _expect_refusal(write(version=ckpt.VERSION + 1), "format version")
    bigger = {**raw["model_config"], "hidden": 12}
    _expect_refusal(write(model_config=bigger), "do not fit")
    unknown = {**raw["model_config"], "attention": True}
    _expect_refusal(write(model_config=unknown), "unknown field")
    other_stft = {**raw["stft"], "hop_length": 64}
    _expect_refusal(write(stft=other_stft), "disagrees")
    _expect_refusal(write(source_names=["a", "b"]), "source names")
    missing = {k: v for k, v in raw.items() if k != "state_dict"}
    torch.save(missing, tmp_path / "missing.pt")
    _expect_refusal(tmp_path / "missing.pt", "missing")


def _edited(tmp_path, raw, **changes):
    """``raw`` with ``changes``, its checksum recomputed: a file that only the checks after the checksum can refuse."""
    payload = {**raw, **changes}
    meta = {k: payload[k] for k in ("model_config", "stft", "source_names")}
    payload["checksum"] = ckpt._checksum(meta, payload["state_dict"])
    out = tmp_path / "edited.pt"
    torch.save(payload, out)
    return out


def test_refuses_configs_that_cannot_build_a_model(tmp_path):
    """Each of these ended in a traceback (or, for the source names, loaded and later wrote
    outside the output folder); the loader names the file and the problem instead."""
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model())
    raw = torch.load(path, weights_only=True)
    mc = raw["model_config"]
    names = ["../../escape", "music"]
    cases = [
        (dict(source_names=5), "source names"),
        (dict(model_config={**mc, "hidden": 8.0}), "hidden must be an integer"),
        (dict(model_config={**mc, "mask_options": {"n_phases": 4}}), "takes the options"),
        (dict(model_config={**mc, "floor_db": float("nan")}), "floor_db"),
        (dict(model_config={**mc, "source_names": names}, source_names=names), "source name"),
        (dict(model_config={**mc, "stft": {**raw["stft"], "sample_rate": "8000"}},
              stft={**raw["stft"], "sample_rate": "8000"}), "sample_rate must be an integer"),
    ]
    for changes, match in cases:
        _expect_refusal(_edited(tmp_path, raw, **changes), match)
    # a config far larger than its weights: refused from the shapes, nothing allocated (was a 2.6 TB allocation)
    _expect_refusal(_edited(tmp_path, raw, model_config={**mc, "hidden": 400_000}), "do not fit")
    # tensor names that are not strings
    _expect_refusal(_edited(tmp_path, raw, state_dict={**raw["state_dict"], "extra": torch.zeros(1)}), "do not fit")
    bad_keys = {**raw, "state_dict": {**raw["state_dict"], 3: torch.zeros(1)}}
    torch.save(bad_keys, tmp_path / "keys.pt")
    _expect_refusal(tmp_path / "keys.pt", "mapping of names to tensors")
    # a value JSON cannot write (a set) made the checksum itself raise
    with_set = {**raw, "model_config": {**mc, "mask": "magbook", "mask_options": {"magbook": {0.0, 1.0}}}}
    torch.save(with_set, tmp_path / "set.pt")
    _expect_refusal(tmp_path / "set.pt", "checksum mismatch")


def test_save_refuses_training_state_it_could_not_load(tmp_path):
    """A NumPy scalar in the training state was saved (over the previous checkpoint) into a
    file that load_checkpoint then refused as holding Python objects."""
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), {"step": 3})
    before = path.read_bytes()
    for state, where in [({"step": np.int64(4)}, r"training_state\['step'\] is a numpy.int64"),
                         ({"history": [1.0, np.float64(2.0)]}, r"training_state\['history'\]\[1\]"),
                         ({"when": datetime.date(2026, 1, 1)}, "datetime.date")]:
        with pytest.raises(TypeError, match=where):
            save_checkpoint(path, _model(), state)
    assert path.read_bytes() == before and load_checkpoint(path)[1] == {"step": 3}


def test_numpy_numbers_in_a_config_are_stored_as_plain_numbers(tmp_path):
    """preset(hidden=np.int64(8)) built a model whose checkpoint no weights_only load could read."""
    model = SeparationModel(preset("chimerapp", hidden=np.int64(8), layers=np.int32(1), dropout=np.float64(0.1),
                                   stft={"sample_rate": np.int64(8000), "n_fft": 128, "hop_length": 32}))
    save_checkpoint(tmp_path / "np.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "np.pt")
    assert loaded.config == model.config and type(loaded.config.hidden) is int


def test_phasebook_checkpoint_of_earlier_versions_loads(tmp_path):
    """Earlier versions saved the fixed phasebook as a complex buffer; it is now derived from n_phases."""
    model = _model("chimerapp-phasebook").eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, model)
    raw = torch.load(path, weights_only=True)
    assert "mask_head.phasebook" not in raw["state_dict"]
    old_state = {**raw["state_dict"], "mask_head.phasebook": model.mask_head.phasebook.clone()}
    loaded, _ = load_checkpoint(_edited(tmp_path, raw, state_dict=old_state))
    x = torch.randn(1, 700)
    assert torch.equal(loaded(x).masks, model(x).masks)


@cuda
def test_checkpoint_saved_on_cuda_loads_on_cpu(tmp_path):
    model = _model("chimerapp-phasebook").cuda().eval()
    path = tmp_path / "gpu.pt"
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 600, device="cuda")).masks.abs().sum().backward()
    opt.step()
    save_checkpoint(path, model, {"optimizer": opt.state_dict()})
    loaded, state = load_checkpoint(path, map_location="cpu")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert all(p.device == torch.device("cuda", 0) for p in load_checkpoint(path, map_location=0)[0].parameters())
    assert all(t.device.type == "cpu" for s in state["optimizer"]["state"].values() for t in s.values())
    x = torch.randn(1, 700)
    torch.testing.assert_close(loaded(x).masks, model(x.cuda()).masks.cpu(), atol=1e-4, rtol=1e-4)


def test_loading_the_bundled_model_stays_light():
    # The shape check builds the model on "meta": its window there went through torch's
    # decompositions and imported torch._dynamo (about 800 modules, 1.1 s, 70 MB per load).
    code = ("import sys; from chimera import pretrained; pretrained.load(); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
