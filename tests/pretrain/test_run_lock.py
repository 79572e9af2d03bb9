"""One training per run folder (pretrain.run_lock): a second training is refused before it builds anything,
naming the holder, and leaves the folder as it was; the lock goes with its process, even after kill -9.

The holder is a real second process that takes the lock and waits on its stdin, so nothing here waits on time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.run_lock import RunLocked, hold_run_lock

REPO = Path(__file__).resolve().parents[2]
ENV = {**{k: v for k, v in os.environ.items() if k != "RANK"}, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
HOLDER = ("import sys\nfrom pretrain.run_lock import hold_run_lock\nwith hold_run_lock(sys.argv[1]):\n"
          "    print('held', flush=True)\n    sys.stdin.read()\n")


def start_holder(run: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    assert holder.stdout.readline().strip() == "held"  # blocks until the lock is taken
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def contents(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder as a finished training leaves it (config, a checkpoint tag, metrics)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step00000003").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step00000003")
    (run / "config.yaml").write_text("run:\n  dir: run\n")
    (run / "metrics.jsonl").write_text('{"step": 3}\n')
    return run


@pytest.mark.parametrize("command, config", [("train", "tiny_cpu.yaml"), ("text-pretrain", "keepfit_v2_text_cpu.yaml")])
def test_a_second_training_is_refused_naming_the_holder(run, command, config, tiny_shards):
    holder = start_holder(run)
    data = ["--data.public", str(tiny_shards["public"]), "--data.elite", str(tiny_shards["elite"])]
    try:
        before = contents(run)
        second = subprocess.run([sys.executable, "-m", "pretrain", command, "--config",
                                 f"pretrain/configs/{config}", "--run.dir", str(run), "--run.steps", "1",
                                 *(data if command == "train" else [])],
                                capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
        assert second.returncode == 1, second.stdout + second.stderr
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith(f"retina-pretrain {command}: error: run folder {run} is in use")
        assert f"pid {holder.pid} on {socket.gethostname()}" in error
        assert "starting fresh" not in second.stdout and "resumed" not in second.stdout
        assert contents(run) == before  # nothing written, not even the holder's record
    finally:
        release(holder)


def test_the_lock_is_exclusive_within_one_process_and_released_after(run):
    with hold_run_lock(run):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} "):
            with hold_run_lock(run):
                pass
    with hold_run_lock(run):  # released at the end of the block: the next training proceeds
        pass


def test_a_killed_holder_frees_the_run_at_once(run):
    holder = start_holder(run)
    with pytest.raises(RunLocked, match=f"pid {holder.pid} "):
        with hold_run_lock(run):
            pass
    holder.kill()  # SIGKILL: no finally block runs in the holder
    assert holder.wait(timeout=60) == -signal.SIGKILL
    with hold_run_lock(run):
        assert f'"pid": {os.getpid()}' in (run / ".lock").read_text()


def test_only_rank_0_takes_the_lock(run):
    # every rank of a job shares the folder; a non-zero rank locking it would be refused by its own rank 0
    rank1 = "import sys\nfrom pretrain.run_lock import hold_run_lock\nwith hold_run_lock(sys.argv[1]):\n    pass\n"
    with hold_run_lock(run):
        for rank, code in (("1", 0), ("0", 1)):
            result = subprocess.run([sys.executable, "-c", rank1, str(run)], capture_output=True, text=True,
                                    cwd=REPO, env={**ENV, "RANK": rank}, timeout=120)
            assert result.returncode == code, result.stderr
