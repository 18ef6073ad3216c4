"""bench/resumable.py: a benchmark's training run killed part-way resumes where its last validated
checkpoint left it, and counts its time and its resume."""
import json
import sys

import pytest

from conftest import CONFIGS, REPO, Killed, killed_at

sys.path.insert(0, str(REPO / "bench"))
import resumable  # noqa: E402


def _log(work, start, *records):
    folder = work / start / "vis_data"
    folder.mkdir(parents=True)
    (folder / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_folder_of_another_job_is_emptied_and_one_of_the_same_job_kept(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    (work / "20260101_000000").mkdir()
    (work / "run.log").write_text("a killed run of an older bench")
    resumable.prepare(work, {"seed": 0})
    assert sorted(p.name for p in work.iterdir()) == [resumable.SPEC]

    (work / "epoch_8.pth").write_bytes(b"")
    resumable.prepare(work, {"seed": 0})
    assert (work / "epoch_8.pth").exists()
    resumable.prepare(work, {"seed": 0, "drops": (1, 2)})  # JSON keeps the tuple as a list
    resumable.prepare(work, {"seed": 0, "drops": (1, 2)})
    (work / "epoch_8.pth").write_bytes(b"")
    resumable.prepare(work, {"seed": 0, "drops": (1, 2)})
    assert (work / "epoch_8.pth").exists()
    resumable.prepare(work, {"seed": 1})
    assert not (work / "epoch_8.pth").exists()
    assert json.loads((work / resumable.SPEC).read_text()) == {"seed": 1}


def test_the_resume_point_is_the_newest_checkpoint_whose_validation_is_logged(tmp_path):
    work = tmp_path / "run"
    resumable.prepare(work, {"seed": 0})
    assert resumable.resume_point(work) is None
    for epoch in (8, 16):
        (work / f"epoch_{epoch}.pth").write_bytes(b"")
    assert resumable.resume_point(work) is None  # no validation logged: killed before the first ended
    _log(work, "20260101_000000", {"coco/bbox_mAP": 0.5, "step": 8})
    # epoch_16.pth was written, and the run killed while validating it.
    assert resumable.resume_point(work) == work / "epoch_8.pth"
    _log(work, "20260101_010000", {"coco/bbox_mAP": 0.6, "step": 16})
    assert resumable.resume_point(work) == work / "epoch_16.pth"


def test_the_logs_of_two_starts_merge_the_later_replacing_the_earlier(tmp_path):
    work = tmp_path / "run"
    _log(work, "20260101_000000", {"loss": 3.0, "iter": 10, "step": 10}, {"coco/bbox_mAP": 0.1, "step": 1},
         {"loss": 2.0, "iter": 20, "step": 20})  # iteration 20 ran past the checkpoint, then the kill
    _log(work, "20260101_010000", {"loss": 2.5, "iter": 20, "step": 20}, {"step": 2})
    train, _ = resumable.logged(work)
    assert {step: r["loss"] for step, r in train.items()} == {10: 3.0, 20: 2.5}
    assert resumable.val_curve(work) == [(1, 0.1), (2, 0.0)]  # no COCO metrics: no box found


@pytest.mark.slow
def test_a_killed_run_resumes_and_counts_its_earlier_start(tmp_path, shapes_root, private_home):
    import torch

    from ldcache.train.runner import runner_from_config

    work = tmp_path / "run"
    options = {"train_dataloader.dataset.indices": 16, "val_dataloader.dataset.indices": 4,
               "train_cfg.max_epochs": 2, "train_cfg.val_interval": 1, **resumable.checkpoint_options(1),
               "randomness.seed": 0}
    resumable.prepare(work, options)

    def build(kill):
        def runner(cfg_options, resume):
            built = runner_from_config(CONFIGS / "tiny" / "gfl_r18_tiny.py", work, cfg_options, resume=resume)
            for hook in kill:
                built.register_hook(hook)
            return built
        return runner

    with pytest.raises(Killed):
        resumable.train(work, options, build([killed_at("after_val_epoch")]))
    first = torch.load(work / "epoch_1.pth", weights_only=False)["meta"]
    assert first["resumed_at"] == [] and first["train_seconds"] > 0

    assert resumable.run_clock().resumes() == {}  # a run never killed names no resume
    runner, clock = resumable.train(work, options, build([]))
    assert runner.train_loop.epoch == 2 and clock.resumes() == {"resumed_at": [1]}
    assert clock.seconds() > first["train_seconds"] and clock.cpu_seconds() > first["train_cpu_seconds"]
    assert [epoch for epoch, _ in resumable.val_curve(work)] == [1, 2]
    # max_keep_ckpts: the two newest checkpoints, whose meta carries the resume.
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth"]
    assert torch.load(work / "epoch_2.pth", weights_only=False)["meta"]["resumed_at"] == [1]
