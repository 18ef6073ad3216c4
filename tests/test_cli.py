from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_help_lists_the_three_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("dump-teacher", "train-student", "inspect", "demo"):
        assert command in result.output


def test_unimplemented_stages_say_so_and_fail():
    for command, issue in (("inspect", 6),):
        result = runner.invoke(app, [command])
        assert result.exit_code == 2, command
        assert "not implemented yet" in result.output and f"issue {issue}" in result.output
        assert "Traceback" not in result.output


def test_dump_teacher_help_explains_its_options():
    result = runner.invoke(app, ["dump-teacher", "--help"])
    assert result.exit_code == 0
    for option in ("--ann-file", "--img-dir", "--out", "--scale", "--region", "--dtype", "--resume"):
        assert option in result.output
