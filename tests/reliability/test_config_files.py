"""A --config file that is not YAML, is binary, or cannot be read: one line naming the file and the problem, exit 2
(issue 14)."""

from __future__ import annotations

import pytest

from pretrain.commands import export_hf
from pretrain.commands import train as train_cli
from shards import cli as shards_cli

CASES = {
    "not-yaml": (b"run: {steps: [1,\n  bad: : :\n", "not valid YAML at line 2, column 8: expected the node content"),
    "tab": (b"run:\n  steps: 5\n\tlog_every: 2\n", "not valid YAML at line 3, column 1: found character '\\t'"),
    "binary": (bytes(range(256)) * 4, r"not a YAML text file (binary; starts b'\x00\x01\x02"),
    "utf8-with-nul": (b"run:\x00 {}\n", r"not a YAML text file (binary; starts b'run:\x00 {}\n')"),
    "a-list": (b"- run\n- data\n", "a config file must hold a mapping, got list"),
}


def _one_error_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert not any(ord(c) < 32 for c in lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, name):
    content, problem = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    line = _one_error_line(capsys, train_cli.cli_main, ["--config", str(path)])
    assert line.startswith(f"retina-pretrain train: error: {path}: ") and problem in line, line
    # the same parser layer serves every command line, and --help after a bad file does not hide the error
    line = _one_error_line(capsys, shards_cli.main, ["stats", "--config", str(path), "--help"])
    assert f"{path}: " in line and problem in line, line


@pytest.mark.parametrize("make, problem", [(lambda p: None, "cannot read: No such file or directory"),
                                           (lambda p: p.mkdir(), "cannot read: Is a directory")],
                         ids=["missing", "folder"])
def test_an_unreadable_options_file_is_named(tmp_path, capsys, make, problem):
    path = tmp_path / "options.yaml"
    make(path)
    line = _one_error_line(capsys, export_hf.cli_main, ["run", str(tmp_path / "out"), "--options", str(path)])
    assert line == f"retina-pretrain export-hf: error: {path}: {problem}"


def test_a_bad_base_file_is_named(tmp_path, capsys):
    (tmp_path / "base.yaml").write_bytes(b"\xff\xfe\x00binary")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nrun: {steps: 3}\n")
    line = _one_error_line(capsys, train_cli.cli_main, ["--config", str(child)])
    assert f"{tmp_path / 'base.yaml'}: not a YAML text file" in line


def test_a_wrong_value_is_one_line_too(capsys):
    line = _one_error_line(capsys, train_cli.cli_main, ["--run.steps", "[1,"])
    assert line.startswith("retina-pretrain train: error: ") and "run.steps" in line
