from typer.testing import CliRunner

from conftest import CONFIGS

from ldcache.cli import app

runner = CliRunner()


def test_help_lists_the_three_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("dump-teacher", "train-student", "inspect", "verify", "demo"):
        assert command in result.output


def test_verify_help_states_its_exit_codes():
    result = runner.invoke(app, ["verify", "--help"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "0 when the store is OK, 1 when it is damaged or unfinished, 2 when" in said


def test_dump_teacher_help_explains_its_options():
    result = runner.invoke(app, ["dump-teacher", "--help"])
    assert result.exit_code == 0
    for option in ("--ann-file", "--img-dir", "--out", "--scale", "--region", "--dtype", "--resume"):
        assert option in result.output


def test_demo_refuses_a_schedule_of_no_epochs_in_one_line():
    result = runner.invoke(app, ["demo", "--teacher-epochs", "0"])
    assert result.exit_code == 2 and "--teacher-epochs" in result.output and "Traceback" not in result.output


def test_cfg_options_take_mmdets_spelling_of_several_pairs_after_one_flag():
    from ldcache.cli import mmdet_cfg_options

    assert mmdet_cfg_options(["dump-teacher", "c.py", "--cfg-options", "a=1", "b.c=[1,2]", "--out", "s.zarr"]) == [
        "dump-teacher", "c.py", "--cfg-options", "a=1", "--cfg-options", "b.c=[1,2]", "--out", "s.zarr"]
    assert mmdet_cfg_options(["x", "--cfg-options=a=1", "b=2", "ckpt.pth"]) == [
        "x", "--cfg-options=a=1", "--cfg-options", "b=2", "ckpt.pth"]
    assert mmdet_cfg_options(["x", "--out", "a=b.zarr"]) == ["x", "--out", "a=b.zarr"], "only after --cfg-options"
    assert mmdet_cfg_options(["x", "--cfg-options", "a=1", "runs/lr=0.01/epoch_12.pth"]) == [
        "x", "--cfg-options", "a=1", "runs/lr=0.01/epoch_12.pth"], "a path with '=' is no pair"
    # Through the app: the second pair is an option, not an extra argument.
    result = runner.invoke(app, ["train-teacher", str(CONFIGS / "tiny/ld_r18_tiny_mmdet.py"), "--cfg-options",
                                 "train_cfg.max_epochs=1", "train_dataloader.batch_size=2"])
    assert "is an LD config" in result.output and "unexpected extra argument" not in result.output
