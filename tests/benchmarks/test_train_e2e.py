"""benchmarks/train_e2e.py's CPU path (--smoke): the GPU session's end-to-end step with tiny shards, towers and
steps: shards -> retina-pretrain train (DeepSpeed) -> plain loop -> eval -> export-hf, both configs into one
results JSON. Nothing is asserted about the speeds beyond their being finite and positive."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_e2e.py"
CONFIGS = ("gpu_vit_b16_224", "gpu_flair_rn50_512")


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("e2e")
    out = work / "train_e2e-cpu.json"
    _run("shards", "--work", str(work), "--smoke", "--workers", "1")
    for name in CONFIGS:
        _run("run", "--config", str(REPO / "pretrain" / "configs" / f"{name}.yaml"), "--work", str(work),
             "--out", str(out), "--smoke", "--steps", "4")
    return json.loads(out.read_text()), work


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


@pytest.mark.slow
def test_both_configs_train_evaluate_and_export(results):
    data, work = results
    assert data["benchmark"] == "train_e2e" and data["date"]
    assert set(data["runs"]) == set(CONFIGS)  # the second run kept the first one's entry
    for name, run in data["runs"].items():
        assert run["device"]["kind"] == "cpu" and run["steps"] == 4 and run["precision"] == "fp32"
        assert {"train", "plain", "eval", "export"} <= run["seconds"].keys()
        ours = run["retinascale"]
        assert len(ours["samples_per_s_intervals"]) == 4  # --steps 4 logs every step
        assert all(_positive(r) for r in ours["samples_per_s_intervals"])
        assert _positive(ours["samples_per_s"])
        assert _positive(ours["peak_memory_mib"]) and math.isfinite(ours["final_loss"])
        assert _positive(run["plain"]["samples_per_s"]) and _positive(run["vs_plain"])
        assert run["eval"] and all(0.0 <= d["zero_shot_aca"] <= 1.0 for d in run["eval"].values())
        assert {"config.json", "model.safetensors"} <= set(run["export"]["files"])
        assert (work / "runs" / name / "checkpoints" / "latest").is_file()


@pytest.mark.slow
def test_median_is_over_the_logged_intervals(results):
    data, work = results
    for name, run in data["runs"].items():
        rows = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        rates = sorted(row["samples_per_s"] for row in rows)
        assert run["retinascale"]["samples_per_s"] == pytest.approx((rates[1] + rates[2]) / 2)
        assert run["retinascale"]["peak_memory_mib"] == max(row["mem_mib"] for row in rows)
