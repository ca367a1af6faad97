"""The one error type of training."""


class TrainError(RuntimeError):
    """A problem with the recipe, the data or the run folder; the message says what."""
