"""mmengine resume under torch >= 2.6: own checkpoints resume, foreign pickles are refused."""
import pickle

import pytest
import torch

from conftest import CONFIGS, Killed, killed_at

pytestmark = pytest.mark.slow

SMALL = {
    # 16 images, batch 8: two iterations an epoch; no validation inside the schedule.
    "train_dataloader.dataset.indices": 16,
    "train_cfg.val_interval": 100,
    "default_hooks.logger.interval": 1,
    "default_hooks.checkpoint.max_keep_ckpts": 1,
    "randomness.seed": 0,
}


def _runner(work_dir, max_epochs, resume):
    from ldcache.train.runner import runner_from_config

    return runner_from_config(CONFIGS / "tiny" / "gfl_r18_tiny.py", work_dir,
                              {**SMALL, "train_cfg.max_epochs": max_epochs}, resume=resume)


def test_train_one_epoch_resume_and_train_on(tmp_path, shapes_root, private_home):
    work = tmp_path / "work"
    first = _runner(work, max_epochs=1, resume=False)
    first.train()
    epoch1 = torch.load(work / "epoch_1.pth", weights_only=False)  # read now: the next run removes it
    assert (work / "epoch_1.pth.ldsig").is_file()

    second = _runner(work, max_epochs=2, resume=True)
    second.train()
    assert second.train_loop.epoch == 2 and second.train_loop.iter == 4
    assert (work / "epoch_2.pth").is_file() and (work / "epoch_2.pth.ldsig").is_file()
    # max_keep_ckpts=1 removed epoch_1.pth: its signature goes with it.
    assert not (work / "epoch_1.pth").exists() and not (work / "epoch_1.pth.ldsig").exists()
    epoch2 = torch.load(work / "epoch_2.pth", weights_only=False)
    assert epoch2["meta"]["epoch"] == 2 and epoch2["meta"]["iter"] == 4
    # Resumed, not restarted: the optimizer kept its step count across the resume.
    steps1 = next(iter(epoch1["optimizer"]["state"].values()))["step"]
    steps2 = next(iter(epoch2["optimizer"]["state"].values()))["step"]
    assert float(steps1) == 2 and float(steps2) == 4


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


# The planted file is a plain pickle, which torch's weights-only reader warns about before refusing it.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_resume_refuses_a_planted_malicious_checkpoint(tmp_path, shapes_root, private_home):
    from ldcache.errors import UntrustedCheckpointError

    work = tmp_path / "work"
    work.mkdir()
    evil, marker = work / "epoch_1.pth", tmp_path / "pwned"
    with open(evil, "wb") as f:
        pickle.dump({"meta": {"epoch": 1, "iter": 2}, "state_dict": {}, "x": _Payload(marker)}, f)
    (work / "last_checkpoint").write_text(str(evil))
    runner = _runner(work, max_epochs=2, resume=True)
    with pytest.raises(UntrustedCheckpointError):
        runner.train()
    assert not marker.exists()


def _interrupted_then_resumed(work, options) -> dict:
    from ldcache.train.runner import runner_from_config

    config = CONFIGS / "tiny" / "gfl_r18_tiny.py"
    first = runner_from_config(config, work, options)
    first.register_hook(killed_at("after_train_epoch"))
    with pytest.raises(Killed):
        first.train()
    runner_from_config(config, work, options, resume=True).train()
    return torch.load(work / "epoch_2.pth", weights_only=False)["state_dict"]


def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_one(tmp_path, shapes_root, private_home,
                                                                        monkeypatch):
    from ldcache.train import random_state_hook
    from ldcache.train.runner import runner_from_config

    # A validation between the two epochs: the uninterrupted run validates where the killed one
    # stopped, and must draw nothing the resumed run would miss.
    options = {**SMALL, "train_cfg.max_epochs": 2, "train_cfg.val_interval": 1,
               "val_dataloader.dataset.indices": 4}
    runner_from_config(CONFIGS / "tiny" / "gfl_r18_tiny.py", tmp_path / "straight", options).train()
    straight = torch.load(tmp_path / "straight" / "epoch_2.pth", weights_only=False)["state_dict"]

    resumed = _interrupted_then_resumed(tmp_path / "resumed", options)
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)

    # The control: without the states (mmengine alone), the second epoch flips other images.
    monkeypatch.setattr(random_state_hook, "set_random_state", lambda state: None)
    reseeded = _interrupted_then_resumed(tmp_path / "reseeded", options)
    assert not all(torch.equal(straight[name], reseeded[name]) for name in straight)
