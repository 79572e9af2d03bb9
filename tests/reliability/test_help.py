"""`--help` of every retina-pretrain / retina-shards / retina-cluster command prints its usage and exits 0
(issue 14)."""

from __future__ import annotations

import pytest

from cluster import cli as cluster_cli
from cluster import train_job
from pretrain import cli as pretrain_cli
from shards import cli as shards_cli

MAINS = {"retina-pretrain": (pretrain_cli.main, [*pretrain_cli.COMMANDS]),
         "retina-shards": (shards_cli.main, [*shards_cli.COMMANDS]),
         "retina-cluster": (cluster_cli.main, [*cluster_cli.COMMANDS])}
CASES = [(prog, command) for prog, (_, commands) in MAINS.items() for command in [None, *commands]]


@pytest.mark.parametrize("prog, command", CASES, ids=[f"{p} {c or ''}".strip() for p, c in CASES])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_exits_0(capsys, prog, command, flag):
    main, _ = MAINS[prog]
    with pytest.raises(SystemExit) as exc:
        main([command, flag] if command else [flag])
    out, err = capsys.readouterr()
    assert exc.value.code == 0 and "Traceback" not in err, err
    assert out.startswith("usage: ") and prog in out.splitlines()[0]
    if command:
        assert command in out.splitlines()[0] and "--config" in out


def test_the_ray_launcher_help_lists_the_train_options_too(capsys):
    with pytest.raises(SystemExit) as exc:
        train_job.parse_args(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--max_failures" in out and "--run.steps" in out


def test_help_after_a_bad_config_file_still_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {steps: [1,\n")
    with pytest.raises(SystemExit) as exc:
        pretrain_cli.main(["train", "--config", str(bad), "--help"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"retina-pretrain train: error: {bad}: not valid YAML")
