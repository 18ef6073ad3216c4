from typer.testing import CliRunner

from ldcache.cli import app

runner = CliRunner()


def test_help_lists_the_three_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("dump-teacher", "train-student", "inspect", "demo"):
        assert command in result.output


def test_dump_teacher_help_explains_its_options():
    result = runner.invoke(app, ["dump-teacher", "--help"])
    assert result.exit_code == 0
    for option in ("--ann-file", "--img-dir", "--out", "--scale", "--region", "--dtype", "--resume"):
        assert option in result.output
