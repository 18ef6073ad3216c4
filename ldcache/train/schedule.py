"""Config options that shorten or lengthen the shapes configs' schedule and keep its shape.

The tiny configs (configs/_base_/gfl_shapes.py) follow mmdet's 1x schedule: a linear warm-up, then
the learning rate drops tenfold at 2/3 and at 11/12 of training. Setting only
`train_cfg.max_epochs` would leave the drops where they were (never reached in a shorter run), so
the demo and the experiment move them with the length.
"""
from __future__ import annotations

# Where the learning rate drops tenfold, as fractions (numerator, denominator) of the run: mmdet's 1x.
DROPS = ((2, 3), (11, 12))


def scaled_schedule(epochs: int, val_interval: int | None = None) -> dict:
    """Options for an `epochs`-long run with the drops at epochs 2/3 and 11/12 of it.

    Args:
        epochs (int): Training epochs.
        val_interval (int, optional): Epochs between validations. Defaults to once, at the end.

    Returns:
        dict: `--cfg-options` style keys (`train_cfg.max_epochs`, `param_scheduler.1.*`).
    """
    return {"train_cfg.max_epochs": epochs, "train_cfg.val_interval": val_interval or epochs,
            "param_scheduler.1.end": epochs, "param_scheduler.1.milestones": _drops(epochs)}


def scaled_iteration_schedule(epochs: int, iterations_per_epoch: int,
                              drops: tuple[tuple[int, int], ...] = DROPS) -> dict:
    """Options for an `epochs`-long run with the drops placed by iteration: in a run of a few epochs
    the epoch-placed drops would fall together or at the very end.

    Args:
        epochs (int): Training epochs.
        iterations_per_epoch (int): Batches in one epoch.
        drops (tuple[tuple[int, int], ...]): where the LR drops, as fractions (n, d) of the run.

    Returns:
        dict: `--cfg-options` style keys.
    """
    total = epochs * iterations_per_epoch
    return {"train_cfg.max_epochs": epochs, "param_scheduler.1.by_epoch": False, "param_scheduler.1.end": total,
            "param_scheduler.1.milestones": _drops(total, drops)}


def _drops(length: int, drops: tuple[tuple[int, int], ...] = DROPS) -> list[int]:
    """The drops of a schedule `length` epochs or iterations long, in whole steps (exact integer
    fractions); never at 0, where mmengine's MultiStepLR would apply them before the first step."""
    return [max(1, length * n // d) for n, d in drops]
