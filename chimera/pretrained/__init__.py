"""The models shipped with chimera (see README.md in this folder: their model card).

Nothing is downloaded: the weights are files of this package. ``load()`` gives the bundled
vocals/accompaniment model, ``Separator.from_pretrained()`` a separator around it, and the
repository's ``hubconf.py`` serves the same model to ``torch.hub.load``.
"""
import os

from ..models import SeparationModel, load_checkpoint

__all__ = ["DEFAULT", "MODELS", "default_model_path", "load", "model_name", "model_path"]

#: Name -> file in this folder. Names are what ``--model`` / ``-n`` and torch.hub accept.
MODELS = {"vocals_accompaniment": "vocals-accompaniment.pt"}
DEFAULT = "vocals_accompaniment"
DEFAULT_MODEL = MODELS[DEFAULT]


def model_path(name: str = DEFAULT) -> str:
    """The file of the bundled model `name`; ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"no bundled model {name!r}; bundled: {', '.join(MODELS)}")
    return os.path.join(os.path.dirname(__file__), MODELS[name])


def default_model_path() -> str:
    return model_path(DEFAULT)


def _is_file_spec(spec) -> bool:
    spec = os.fspath(spec)
    return spec not in MODELS and (os.path.exists(spec) or os.sep in spec or spec.endswith(".pt"))


def load(name: str = DEFAULT, device="cpu") -> SeparationModel:
    """The bundled model `name` (see :data:`MODELS`), or the checkpoint file at the path
    `name`, in eval mode on `device`. ValueError for a name that is neither;
    :class:`~chimera.models.CheckpointError` for a file that is not a usable checkpoint."""
    path = os.fspath(name) if _is_file_spec(name) else model_path(name)
    model, _ = load_checkpoint(path, map_location=device)
    return model


def model_name(name: str = DEFAULT) -> str:
    """What to call the model of :func:`load`'s `name` (an output folder, a log line): the
    bundled model's name, or the checkpoint file's name without extension."""
    return os.path.splitext(os.path.basename(os.fspath(name)))[0] if _is_file_spec(name) else str(name)
