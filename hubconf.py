"""torch.hub entry points, so a clone (or the GitHub repository) serves the bundled model:

    model = torch.hub.load("path/to/chimera", "vocals_accompaniment", source="local")
    sources = chimera.Separator(model).separate(waveform, sample_rate)   # (C, channels, L)

The weights are files of the repository (chimera/pretrained/): nothing is downloaded.
"""
# Private names: torch.hub takes every public callable here for an entry point (SeparationModel was one).
from chimera import pretrained as _bundled
from chimera.models import SeparationModel as _SeparationModel
from chimera.separate import resolve_device as _resolve_device

dependencies = ["torch", "numpy", "soundfile", "soxr", "tqdm"]


def vocals_accompaniment(pretrained=True, device="cpu"):
    """The bundled vocals/accompaniment model (:func:`chimera.pretrained.load`), a
    :class:`~chimera.models.SeparationModel` in eval mode on `device` ("cpu", "cuda",
    "cuda:N", a torch.device, or "auto" / None: the first GPU, else the CPU, as for
    :class:`chimera.Separator`); with ``pretrained=False`` the same architecture, untrained.
    A ValueError for a `pretrained` that is not True or False, or a device that is not there."""
    if not isinstance(pretrained, bool):  # "no" or None loaded the weights (or did not) by truthiness
        raise ValueError(f"pretrained must be True or False, got {pretrained!r}")
    device = _resolve_device(device)  # "auto" failed in torch.device, "cuda" without a GPU in an assertion
    model = _bundled.load("vocals_accompaniment")
    if not pretrained:
        model = _SeparationModel(model.config).eval()
    return model.to(device)
