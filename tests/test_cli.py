from typer.testing import CliRunner

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
