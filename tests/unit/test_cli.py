"""The clinflow command line: help for every command, clear one-line errors."""

import subprocess
import sys

import pytest

from clinflow import serve
from clinflow.cli import build_parser, main

COMMANDS = ["compile", "run", "submit", "serve", "generate", "demo", "images"]


def test_every_command_has_help_for_every_flag(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: clinflow {command}")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"clinflow {name} {action.option_strings} has no help text"


def test_run_with_missing_source_is_one_line(tmp_path, capsys):
    assert main(["run", "--source", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --source {tmp_path / 'nope'}: not a directory"]


def test_bad_param_syntax(capsys):
    assert main(["run", "--param", "seed"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_submit_to_unreachable_host_is_one_line_without_traceback():
    port = serve.free_port()  # nothing listens there
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinflow.cli",
            "submit",
            "--host",
            f"http://127.0.0.1:{port}",
            "--param",
            "source_uri=/gcs/bucket/export",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in result.stderr


def test_images_tag_matches_compiled_spec(capsys, repo_root):
    assert main(["images", "--tag"]) == 0
    tag = capsys.readouterr().out.strip()
    assert tag in (repo_root / "pipelines" / "compiled" / "clinical_risk.yaml").read_text()
