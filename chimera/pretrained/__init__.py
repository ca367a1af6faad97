"""The model shipped with chimera (see README.md in this folder: its model card)."""
import os

DEFAULT_MODEL = "vocals-accompaniment.pt"


def default_model_path():
    return os.path.join(os.path.dirname(__file__), DEFAULT_MODEL)
