"""What every objective module shares: the table of reductions and the one check of a named choice."""

REDUCTIONS = ("none", "mean", "sum")


def check_choice(what: str, value, choices):
    """``value`` if it is one of ``choices``, else a ValueError naming ``what`` and the choices."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def reduce_loss(loss, reduction: str):
    """Per-item losses ``(B,)`` reduced by ``reduction`` (one of :data:`REDUCTIONS`)."""
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
