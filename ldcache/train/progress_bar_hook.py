"""ProgressBarHook: a whole training run as one progress bar on the terminal."""
from __future__ import annotations

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from .. import console


def current_loss(runner, outputs: dict | None, key: str = "loss") -> float | None:
    """The loss `key` of the step just run: from the model's outputs, else from the message hub
    (where RuntimeInfoHook puts it); None when neither has it."""
    if outputs and key in outputs:
        value = outputs[key]
        # The step's loss still holds its graph, and float() of such a tensor warns.
        return float(value.detach() if isinstance(value, torch.Tensor) else value)
    if f"train/{key}" in runner.message_hub.log_scalars:
        return float(runner.message_hub.get_scalar(f"train/{key}").current())
    return None


def bar_description(runner, key: str, loss: float | None) -> str:
    """The text before the bar: the epoch under way and the last loss."""
    epoch = min(runner.epoch + 1, runner.max_epochs)
    return f"epoch {epoch}/{runner.max_epochs} {key} {'--' if loss is None else f'{loss:.3f}'}"


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """Shows training as one progress bar on stderr: epoch, loss, iterations, rate and ETA.

    It stands in for LoggerHook's iteration lines on the terminal where those go to the log file
    only (``ldcache demo`` without ``--verbose``); it logs nothing itself. Only rank 0 draws it.
    Validation and test draw no bar.

    Args:
        loss_key (str): The loss shown, a key of the model's log variables. Defaults to 'loss',
            the sum of all losses.
    """

    def __init__(self, loss_key: str = "loss"):
        self.loss_key = loss_key
        self._bar = None
        self._task = None

    def before_train(self, runner) -> None:
        self._bar = console.progress(enabled=runner.rank == 0, unit="it")
        # A resumed run starts at the iteration it resumed from.
        self._task = self._bar.add_task(bar_description(runner, self.loss_key, None), total=runner.max_iters,
                                        completed=runner.iter)
        self._bar.start()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: dict | None = None) -> None:
        # runner.iter counts the iterations before this one until the loop moves on.
        self._bar.update(self._task, completed=runner.iter + 1,
                         description=bar_description(runner, self.loss_key,
                                                     current_loss(runner, outputs, self.loss_key)))

    def after_train(self, runner) -> None:
        self.stop()

    def stop(self) -> None:
        """End the bar (again: no effect). Call it when training fails, too: a live bar keeps the
        terminal's cursor hidden."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
