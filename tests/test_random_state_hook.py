"""RandomStateHook on its own: which loads restore the random states, and which leave them."""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ldcache.train.random_state_hook import RandomStateHook


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def _runner(iteration: int, diff_rank_seed: bool = False):
    return SimpleNamespace(iter=iteration, cfg={"randomness": {"seed": 0, "diff_rank_seed": diff_rank_seed}})


def _saved_then_drawn(hook: RandomStateHook) -> tuple[dict, tuple]:
    """A checkpoint saved now, and the draws that follow it."""
    checkpoint = {"meta": {}}
    hook.before_save_checkpoint(None, checkpoint)
    return checkpoint, _draws()


@pytest.mark.parametrize("iteration, diff_rank_seed, restored", [
    (160, False, True),   # a resumed run
    (0, False, False),    # load_from: weights to start a new run from
    (160, True, False),   # each rank its own streams: rank 0's would be wrong on the others
])
def test_only_a_resumed_run_gets_the_saved_states_back(iteration, diff_rank_seed, restored):
    hook = RandomStateHook()
    checkpoint, after_save = _saved_then_drawn(hook)
    _draws()  # the killed run drew on; a new process starts elsewhere in the streams
    hook.after_load_checkpoint(None, checkpoint)
    hook.before_train(_runner(iteration, diff_rank_seed))
    assert (_draws() == after_save) is restored


def test_a_checkpoint_without_states_leaves_the_generators_alone():
    hook = RandomStateHook()
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    hook.after_load_checkpoint(None, {"meta": {"epoch": 8}})  # written before the hook existed
    hook.before_train(_runner(160))
    assert random.getstate() == state[0] and (np.random.get_state()[1] == state[1]).all()
    assert torch.equal(torch.get_rng_state(), state[2])
