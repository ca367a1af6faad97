"""torch.hub entry points, so a clone (or the GitHub repository) serves the bundled model:

    model = torch.hub.load("path/to/chimera", "vocals_accompaniment", source="local")
    sources = chimera.Separator(model).separate(waveform, sample_rate)   # (C, channels, L)

The weights are files of the repository (chimera/pretrained/): nothing is downloaded.
"""
from chimera import pretrained as bundled
from chimera.models import SeparationModel

dependencies = ["torch", "numpy", "soundfile", "soxr", "tqdm"]


def vocals_accompaniment(pretrained=True, device="cpu"):
    """The bundled vocals/accompaniment model (:func:`chimera.pretrained.load`), a
    :class:`~chimera.models.SeparationModel` in eval mode on `device`; with
    ``pretrained=False`` the same architecture, untrained."""
    model = bundled.load("vocals_accompaniment", device=device)
    return model if pretrained else SeparationModel(model.config).to(device).eval()
