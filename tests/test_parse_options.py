"""Tests for utils/parse_options.sh (Kaldi option parsing for recipe scripts)."""

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PARSE_OPTIONS = REPO_ROOT / "utils" / "parse_options.sh"

SCRIPT = f"""\
set -euo pipefail
stage=1
nj=4
foo_bar=default
use_gpu=false
help_message="Usage: demo.sh [options] <dir>"
. {PARSE_OPTIONS}
echo "stage=$stage nj=$nj foo_bar=[$foo_bar] use_gpu=$use_gpu"
echo "positional=$# [$*]"
"""


def run_script(tmp_path, *args):
    script = tmp_path / "demo.sh"
    script.write_text(SCRIPT)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path)


def test_dash_and_underscore_spellings_set_the_variable(tmp_path):
    result = run_script(tmp_path, "--foo-bar", "a b", "--nj", "8", "--use_gpu", "true", "dir1", "dir2")
    assert result.returncode == 0, result.stderr
    assert "stage=1 nj=8 foo_bar=[a b] use_gpu=true" in result.stdout
    assert "positional=2 [dir1 dir2]" in result.stdout


def test_parsing_stops_at_first_positional_argument(tmp_path):
    result = run_script(tmp_path, "--stage", "3", "data/train", "--stage", "5")
    assert result.returncode == 0, result.stderr
    assert "stage=3" in result.stdout
    assert "positional=3 [data/train --stage 5]" in result.stdout


def test_double_dash_ends_options_and_equals_form_works(tmp_path):
    result = run_script(tmp_path, "--stage=6", "--", "--not-an-option")
    assert result.returncode == 0, result.stderr
    assert "stage=6" in result.stdout
    assert "positional=1 [--not-an-option]" in result.stdout


def test_unknown_option_is_an_error_naming_it(tmp_path):
    result = run_script(tmp_path, "--stgae", "3")
    assert result.returncode == 1
    assert "--stgae" in result.stderr
    assert "stage=" not in result.stdout


def test_missing_value_is_an_error(tmp_path):
    result = run_script(tmp_path, "--nj")
    assert result.returncode == 1
    assert "'--nj' needs a value" in result.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_help_message_and_exits_zero(tmp_path, flag):
    result = run_script(tmp_path, "--stage", "2", flag)
    assert result.returncode == 0
    assert "Usage: demo.sh [options] <dir>" in result.stdout
    assert "stage=" not in result.stdout


def test_boolean_option_rejects_non_boolean_value(tmp_path):
    result = run_script(tmp_path, "--use-gpu", "yes")
    assert result.returncode == 1
    assert "expects true or false" in result.stderr and "yes" in result.stderr


def test_config_file_with_options_and_assignments(tmp_path):
    config = tmp_path / "my.conf"
    config.write_text('# comment\n\n--nj 16\nfoo_bar="from config"\n--use-gpu true\n')
    result = run_script(tmp_path, "--config", str(config), "d")
    assert result.returncode == 0, result.stderr
    assert "nj=16 foo_bar=[from config] use_gpu=true" in result.stdout
    assert "positional=1 [d]" in result.stdout


def test_command_line_overrides_config_whatever_the_order(tmp_path):
    config = tmp_path / "my.conf"
    config.write_text("--nj 16\n--stage 9\n")
    result = run_script(tmp_path, "--nj", "2", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "stage=9 nj=2" in result.stdout


def test_config_with_unknown_option_names_file_and_line(tmp_path):
    config = tmp_path / "bad.conf"
    config.write_text("--nj 3\n--no-such-option 1\n")
    result = run_script(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert "--no-such-option" in result.stderr and "bad.conf" in result.stderr and "line 2" in result.stderr


def test_config_option_values_are_not_executed(tmp_path):
    marker = tmp_path / "executed"
    config = tmp_path / "quoted.conf"
    config.write_text(f"--foo-bar \"$(touch {marker}) x\"\n")
    result = run_script(tmp_path, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert f"foo_bar=[$(touch {marker}) x]" in result.stdout


def test_missing_config_file_is_an_error(tmp_path):
    result = run_script(tmp_path, "--config", str(tmp_path / "absent.conf"))
    assert result.returncode == 1
    assert "absent.conf" in result.stderr
