"""retina-pretrain train / text-pretrain refuse values that make no sense while parsing, naming the key, before a
model is built or DeepSpeed starts; an unknown method lists the valid ones (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.commands import text_pretrain
from pretrain.commands import train as train_cli
from pretrain.config import from_dict
from pretrain.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"

BAD = [
    (["--run.steps", "-5"], "run.steps must be >= 1, got -5"),
    (["--run.steps", "0"], "run.steps must be >= 1, got 0"),
    (["--run.log_every", "-1"], "run.log_every must be >= 0, got -1"),
    (["--run.save_every", "-10"], "run.save_every must be >= 0, got -10"),
    (["--data.workers", "-1"], "data.workers must be >= 0, got -1"),
    (["--data.shuffle_buffer", "-2"], "data.shuffle_buffer must be >= 0, got -2"),
    (["--data.batch_size", "0"], "data.batch_size must be >= 1, got 0"),
    (["--data.elite_fraction", "1.5"], "data.elite_fraction must be in [0.0, 1.0], got 1.5"),
    (["--engine.zero_stage", "4"], "engine.zero_stage must be 0, 1, 2 or 3, got 4"),
    (["--engine.lr", "0"], "engine.lr must be > 0, got 0.0"),
    (["--engine.lr", ".nan"], "engine.lr must be > 0, got nan"),
    (["--engine.betas", "[0.9, 1.5]"], "engine.betas[1] must be in [0.0, 1.0), got 1.5"),
    (["--engine.grad_accum_steps", "0"], "engine.grad_accum_steps must be >= 1, got 0"),
    (["--engine.warmup_steps", "-1"], "engine.warmup_steps must be >= 0, got -1"),
    (["--engine.total_steps", "0"], "engine.total_steps must be >= 1, got 0"),
    (["--engine.min_lr_ratio", "2"], "engine.min_lr_ratio must be in [0.0, 1.0], got 2.0"),
    (["--loss_weights", "{contrastive: .inf}"], "loss_weights.contrastive must be a finite number, got inf"),
    (["--method", "nosuchmethod"],
     "method 'nosuchmethod' is unknown; valid methods: clip, flair, keepfit_v1, keepfit_v2, vilref"),
    (["--method", "flair", "--objective", "{use_multihot: true}"],
     "objective: flair has no option 'use_multihot'; its options: use_multi_hot, backend"),
]


@pytest.mark.parametrize("flags, message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_train_refuses_nonsense_while_parsing(capsys, tmp_path, flags, message):
    with pytest.raises(SystemExit) as exc:
        train_cli.cli_main(["--config", str(TINY), "--run.dir", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == f"retina-pretrain train: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_the_same_checks_guard_a_saved_run_config():
    data = {"run": {"steps": 0}}
    with pytest.raises(ValueError, match=r"^runs/x/config.yaml: run.steps must be >= 1, got 0$"):
        from_dict(TrainConfig, data, where="runs/x/config.yaml")
    assert from_dict(TrainConfig, {"run": {"steps": 1, "save_every": 0, "log_every": 0}}).run.steps == 1


def test_text_pretrain_refuses_nonsense_while_parsing(capsys):
    with pytest.raises(SystemExit) as exc:
        text_pretrain.cli_main(["--run.steps", "0"])
    assert exc.value.code == 2 and capsys.readouterr().err == "retina-pretrain text-pretrain: error: run.steps must " \
                                                               "be >= 1, got 0\n"


@pytest.mark.parametrize("flags, message", [
    ([], None),  # the data sets exist: these checks pass
    (["--data.public", "{missing}"], "--data.public: {missing}/index.json: no index.json"),
    (["--data.split", "val"], "--data.public: {public} has no shards for split 'val' (data.split)"),
    (["--data.public", "null", "--data.elite", "null"], "data: set data.public and/or data.elite"),
    (["--method", "vilref", "--objective", "{weighting: sideways}"], "--objective (vilref): weighting must be one of"),
    (["--method", "keepfit_v2", "--objective", "{nope: 1}"], "--objective (keepfit_v2): "),
], ids=["sound", "missing-set", "missing-split", "no-data", "objective-value", "objective-option"])
def test_train_checks_its_inputs_before_the_model_build(tmp_path, tiny_shards, flags, message):
    """In a fresh interpreter: each refusal is one line, and DeepSpeed was never imported, so nothing heavy ran."""
    sets = {"public": str(tiny_shards["public"]), "missing": str(tmp_path / "missing")}
    flags = [f.replace("{missing}", sets["missing"]) for f in flags]
    argv = ["--config", str(TINY), "--run.dir", str(tmp_path / "run"), "--data.public", sets["public"],
            "--data.elite", str(tiny_shards["elite"]), *flags]
    if message is None:  # the checks alone (cli_main would go on to train)
        run = ("from pretrain.config import parse_cli\nfrom pretrain.preflight import check_train_inputs\n"
               f"from pretrain.train import TrainConfig\ncheck_train_inputs(parse_cli(TrainConfig, {argv!r})[0])\n"
               "code = 0\n")
    else:
        run = f"from pretrain.commands.train import cli_main\ncode = cli_main({argv!r})\n"
    script = f"import json, sys\n{run}print(json.dumps([code, 'deepspeed' in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    code, deepspeed = json.loads(result.stdout.strip().splitlines()[-1])
    assert not deepspeed, "the checks imported DeepSpeed"
    if message is None:
        assert code == 0 and result.stderr == "", result.stderr
    else:
        message = message.replace("{missing}", sets["missing"]).replace("{public}", sets["public"])
        assert code == 2 and result.stderr.startswith("retina-pretrain train: error: " + message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
