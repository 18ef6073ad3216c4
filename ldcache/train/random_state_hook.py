"""RandomStateHook: a run resumed from a checkpoint draws the random numbers the uninterrupted run
would have drawn."""
from __future__ import annotations

import random

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

KEY = "random_state"


def random_state() -> dict:
    """The states of Python's, numpy's and torch's global generators (torch's CUDA ones too, when
    there is a GPU)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    """Put the global generators back in `state` (a `random_state()`); CUDA's only on as many GPUs."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Keep the global random states in every checkpoint, and restore them when a run resumes.

    mmengine's resume restores the weights, the optimizer, the schedulers and the epoch, then the
    generators stay as the config's seed left them: the epochs after a resume draw their
    augmentation (flips, crops, the order of a plain shuffle) from the start of those streams, not
    where the interrupted run was. With this hook a run resumed at an epoch's end continues as if
    never stopped, to the bit on CPU (tests/test_resume.py), where the pipeline runs in the main
    process (num_workers=0) or in workers that are not persistent (mmengine seeds those again each
    epoch). Persistent workers' own generators are not saved. The checkpoint holds rank 0's states:
    a DDP run with `randomness.diff_rank_seed=True` keeps mmengine's behaviour.
    ``LDCacheRunner`` registers it; add it to `custom_hooks` with another runner.
    """

    # Last in before_train: nothing may draw between the restore and the first batch.
    priority = "LOWEST"

    def __init__(self) -> None:
        self._loaded: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[KEY] = random_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get(KEY)

    def before_train(self, runner) -> None:
        # A checkpoint is also loaded by `load_from` (weights to start from, a new run): only a
        # resumed run starts past iteration 0.
        per_rank = runner.cfg.get("randomness", {}).get("diff_rank_seed", False)
        if self._loaded is not None and runner.iter > 0 and not per_rank:
            set_random_state(self._loaded)
        self._loaded = None
