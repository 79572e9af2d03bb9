"""retina-cluster's command line without a cluster: options dataclasses, old spellings, `submit -- TRAIN ARGS`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster import cli
from shards.commandline import parse_command

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]):
    return parse_command(cli.parser(), cli.split_train_args(argv))


def test_old_and_new_spellings_agree():
    old = parse(["up", "--num-cpus", "2", "--dashboard-port", "9000", "--temp-dir", "/tmp/r"])
    new = parse(["up", "--num_cpus", "2", "--dashboard_port", "9000", "--temp_dir", "/tmp/r"])
    assert old == new == ("up", cli.UpArgs(num_cpus=2, dashboard_port=9000, temp_dir=Path("/tmp/r")))
    assert parse(["logs", "abc", "-f"]) == ("logs", cli.LogsArgs(job_id="abc", follow=True))
    assert parse(["status"]) == ("status", cli.StatusArgs())
    command, args = parse(["shards", "--out", "o", "--source", "a:b", "--source", "c:d", "--image-size", "64",
                           "--tasks", "2"])
    assert (command, args.source, args.image_size, args.tasks) == ("shards", ["a:b", "c:d"], 64, 2)


def test_submit_takes_the_train_arguments_after_the_separator():
    command, args = parse(["submit", "--workers", "3", "--use-gpu", "--max-failures", "1", "--", "--config", "x.yaml",
                           "--run.steps", "20"])
    assert command == "submit" and (args.workers, args.use_gpu, args.max_failures) == (3, True, 1)
    assert args.train_args == ["--config", "x.yaml", "--run.steps", "20"]
    with pytest.raises(SystemExit):
        parse(["status", "--", "--run.steps", "20"])


def test_train_job_parses_launcher_and_training_options_together():
    from cluster.train_job import parse_args
    from pretrain.train import TrainConfig

    tiny = str(REPO / "pretrain" / "configs" / "tiny_cpu.yaml")
    args, cfg = parse_args(["--workers", "3", "--max-failures", "1", "--config", tiny, "--run.steps", "5"])
    assert (args.workers, args.max_failures, args.use_gpu) == (3, 1, False)
    assert isinstance(cfg, TrainConfig) and type(cfg) is TrainConfig and cfg.run.steps == 5


def test_help_lists_every_command_and_train_job_imports_no_deepspeed():
    result = subprocess.run([sys.executable, "-m", "cluster", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    for command in cli.COMMANDS:
        assert command in result.stdout
    # Ray workers import cluster.train_job before train_worker tells DeepSpeed to use the CPU accelerator
    probe = "import sys, cluster.train_job; assert 'deepspeed' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO).returncode == 0
