"""The `modelroll` CLI's kernel verbs on the embedded SQLite: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from modelroll import __version__
from modelroll_app.main import app
from tests.tiny_onnx import write_linear, write_unsorted_graph


class Cli:
    """Runs `modelroll ...` in-process with MODELROLL_HOME under the test's folder and nothing else set."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, **env: str) -> Result:
        environment: dict[str, str | None] = {"MODELROLL_HOME": str(self.home), "MODELROLL_DATABASE_URL": None,
                                              "MODELROLL_ARTIFACTS_DIR": None, "MODELROLL_LOG_LEVEL": None, **env}
        result = self.runner.invoke(app, list(args), env=environment)
        for text in (result.stdout, result.stderr):
            assert "Traceback" not in text, text
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result


def _one_error_line(result: Result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    return write_linear(tmp_path / "digits.onnx")


def test_version(cli: Cli) -> None:
    result = cli("version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"modelroll {__version__}"


def test_help_lists_the_kernel_verbs(cli: Cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for verb in ("version", "db", "models"):
        assert verb in result.stdout


def test_db_upgrade_current_check_downgrade_on_sqlite(cli: Cli) -> None:
    result = cli("db", "check")
    _one_error_line(result, 1, "is at revision none (empty)", "run `modelroll db upgrade`")
    assert "no revision (empty)" in cli("db", "current").stdout
    upgraded = cli("db", "upgrade")
    assert upgraded.exit_code == 0 and "(head is" in upgraded.stdout
    assert (cli.home / "modelroll.db").is_file()
    assert cli("db", "current").stdout.strip().endswith("(head)")
    checked = cli("db", "check")
    assert checked.exit_code == 0 and "schema matches" in checked.stdout
    _one_error_line(cli("db", "downgrade", "base"), 2, "re-run with --yes")
    assert cli("db", "downgrade", "base", "--yes").exit_code == 0
    assert "no revision (empty)" in cli("db", "current").stdout


def test_db_upgrade_to_an_unknown_revision_is_bad_usage(cli: Cli) -> None:
    _one_error_line(cli("db", "upgrade", "--revision", "nope"), 2, "unknown revision 'nope'")


def test_register_then_list_as_table_and_json(cli: Cli, onnx_file: Path) -> None:
    registered = cli("models", "register", str(onnx_file), "--name", "digits", "--description", "8x8 digits")
    assert registered.exit_code == 0, registered.stderr
    assert "registered model 'digits'" in registered.stdout
    cli("models", "register", str(write_linear(onnx_file.with_name("iris.onnx"), seed=2)), "--name", "iris")

    table = cli("models", "list")
    assert table.exit_code == 0
    rows = [line.split() for line in table.stdout.strip().splitlines()]
    assert rows[0][:4] == ["model", "variant", "serves", "role"]
    assert [row[:4] for row in rows[1:]] == [["digits", "baseline", "production", "baseline"],
                                            ["iris", "baseline", "production", "baseline"]]

    listed = json.loads(cli("models", "list", "--json").stdout)
    assert [m["name"] for m in listed] == ["digits", "iris"]
    [baseline] = listed[0]["variants"]
    assert listed[0]["description"] == "8x8 digits" and listed[0]["production"] == "baseline"
    assert baseline["role"] == "baseline" and baseline["format"] == "onnx"
    assert baseline["size_bytes"] == onnx_file.stat().st_size
    assert baseline["sha256"][:12] in rows[1]
    assert (cli.home / "artifacts" / baseline["sha256"][:2] / baseline["sha256"]).read_bytes() == onnx_file.read_bytes()


def test_list_with_no_models(cli: Cli) -> None:
    assert "no models registered yet" in cli("models", "list").stdout
    assert json.loads(cli("models", "list", "--json").stdout) == []


def test_register_bad_input(cli: Cli, tmp_path: Path, onnx_file: Path) -> None:
    missing = tmp_path / "missing.onnx"
    _one_error_line(cli("models", "register", str(missing), "--name", "digits"), 2, f"no file at {missing}")

    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    _one_error_line(cli("models", "register", str(text), "--name", "digits"), 2,
                    "is not a valid ONNX model", "modelroll accepts ONNX files (.onnx)")

    broken = write_unsorted_graph(tmp_path / "broken.onnx")
    _one_error_line(cli("models", "register", str(broken), "--name", "digits"), 2,
                    "is not a valid ONNX model", "topologically sorted")

    _one_error_line(cli("models", "register", str(onnx_file), "--name", "Digits!"), 2,
                    "model 'Digits!' is not a valid name")

    assert cli("models", "register", str(onnx_file), "--name", "digits").exit_code == 0
    _one_error_line(cli("models", "register", str(onnx_file), "--name", "digits"), 1,
                    "model 'digits' already exists (registered ", "pick another name")
    assert [m["name"] for m in json.loads(cli("models", "list", "--json").stdout)] == ["digits"]


def test_usage_errors_are_one_line_with_exit_2(cli: Cli, onnx_file: Path) -> None:
    _one_error_line(cli("models", "register", str(onnx_file)), 2, "Missing option '--name'",
                    "modelroll models register --help")
    _one_error_line(cli("models", "register"), 2, "Missing argument")
    _one_error_line(cli("nope"), 2, "No such command 'nope'")
    _one_error_line(cli("models", "list", "--yaml"), 2, "No such option: --yaml")


def test_invalid_settings_are_bad_usage(cli: Cli) -> None:
    _one_error_line(cli("version", MODELROLL_ROUTER_PORT="eighty"), 2, "MODELROLL_ROUTER_PORT='eighty' is not valid")
    _one_error_line(cli("version", MODELROLL_LOG_LEVEL="LOUD"), 2, "MODELROLL_LOG_LEVEL='LOUD' is not valid")
    _one_error_line(cli("version", MODELROLL_ROUTER_INLINE_MAX_MS="-1"), 2,
                    "MODELROLL_ROUTER_INLINE_MAX_MS='-1' is not valid")


def test_unreachable_database_fails_with_one_line_and_no_password(cli: Cli) -> None:
    # Nothing listens on loopback port 1: the connection is refused at once.
    line = _one_error_line(cli("models", "list", MODELROLL_DATABASE_URL="postgresql+psycopg://u:pw@127.0.0.1:1/x"),
                           1, "cannot use the database")
    assert ":pw@" not in line


def test_console_script_exit_codes_from_another_directory(tmp_path: Path) -> None:
    """The installed `modelroll` entry point behaves like the in-process app, from any cwd."""
    script = Path(sys.executable).parent / "modelroll"
    env = {"MODELROLL_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([str(script), "version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"modelroll {__version__}")
    bad = subprocess.run([str(script), "models", "register", "nope.onnx", "--name", "x"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: no file at nope.onnx"]


def test_traffic_targets_loopback_only_and_is_bounded(cli: Cli) -> None:
    _one_error_line(cli("traffic", "--url", "http://10.0.0.1:8080", "--seconds", "1"), 2,
                    "only targets loopback addresses", "10.0.0.1")
    result = cli("traffic", "--seconds", "0")
    assert result.exit_code == 2 and "--seconds" in result.stderr


@pytest.mark.parametrize(("recipe", "fragment"), [
    ("prune:1.5", "prune: amount='1.5' is not accepted: amount is float in [0, 1)"),
    ("int8:bogus", "int8: per_channel='bogus' is not accepted"),
    ("int8,prune", "prune must come before the quantization step"),
])
def test_optimize_refuses_a_bad_recipe_parameter_before_building_or_queueing_anything(
        cli: Cli, recipe: str, fragment: str) -> None:
    _one_error_line(cli("optimize", "digits", "-t", recipe), 2, fragment)
    assert not (cli.home / "cache").exists()  # the built-in model was not even built
    assert "no models registered yet" in cli("models", "list").stdout
