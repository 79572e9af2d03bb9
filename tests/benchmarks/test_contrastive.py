"""`retina-bench contrastive`: the quick run end to end and the CPU memory probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.contrastive import MODES, add_ratios, targets
from benchmarks.contrastive_providers import PROVIDERS, flops
from benchmarks.memory import cpu_peaks

CPU_PROVIDERS = ("chunked", "chunked_2dir", "eager", "open_clip")
REPO = Path(__file__).resolve().parents[2]
QUICK_BATCH, QUICK_DIM = (128, 256), (32,)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench") / "r.json"
    # --device cpu: the same providers on a GPU machine too
    cmd = [sys.executable, "-m", "benchmarks", "contrastive", "--quick", "--device", "cpu",
           "--out", str(out), "--no-memory-check", "--providers", *PROVIDERS]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300), out


@pytest.mark.slow
def test_quick_run_writes_results_and_plot(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"]["kind"] == "cpu" and result["device"]["cores"] >= 1 and result["device"]["name"]
    assert {"python", "torch", "triton", "open_clip", "inf_cl"} <= result["versions"].keys()
    assert result["params"]["skipped_providers"] == {"triton": "needs CUDA", "inf_cl": "needs CUDA"}
    assert result["products"]["per_provider"] == {"chunked": [1, 3], "chunked_2dir": [2, 6], "eager": [2, 4],
                                                  "open_clip": [2, 4]}
    assert out.with_suffix(".png").stat().st_size > 0
    assert "median ms" in proc.stdout  # the table


@pytest.mark.slow
def test_quick_run_times_every_point(quick_run):
    _, out = quick_run
    timings = json.loads(out.read_text())["timings"]
    got = {(t["provider"], t["batch"], t["dim"], t["mode"]): t for t in timings}
    for provider in CPU_PROVIDERS:
        for batch in QUICK_BATCH:
            for dim in QUICK_DIM:
                for mode in MODES:
                    t = got[(provider, batch, dim, mode)]
                    assert t["status"] == "ok" and len(t["runs_ms"]) == 3 and "median_ms" in t
                    rate = flops(provider, mode, batch, dim) / (t["median_ms"] * 1e-3) / 1e12
                    assert t["tflops"] == pytest.approx(rate)


@pytest.mark.slow
def test_quick_run_measures_positive_peak_memory(quick_run):
    _, out = quick_run
    memory = json.loads(out.read_text())["memory"]
    assert {(m["provider"], m["batch"]) for m in memory} == {(p, b) for p in CPU_PROVIDERS for b in QUICK_BATCH}
    assert all(m["status"] == "ok" and m["peak_mib"] > 0 for m in memory), memory


@pytest.mark.slow
def test_memory_probe_sees_the_eager_matrices():
    chunked, eager = cpu_peaks([("chunked", 2048, 64), ("eager", 2048, 64)], "fp32", chunk_size=128)
    assert chunked["status"] == eager["status"] == "ok", (chunked, eager)
    matrix_mib = 2048 * 2048 * 4 / 2**20  # one fp32 B x B matrix; eager keeps several for backward
    assert eager["peak_mib"] >= 2 * matrix_mib
    assert eager["peak_mib"] >= 2 * chunked["peak_mib"], (chunked, eager)


def test_ratios_are_speedups_and_memory_fractions():
    timings = [{"provider": p, "batch": 8, "dim": 4, "mode": "full", "status": "ok", "median_ms": ms}
               for p, ms in (("chunked", 2.0), ("eager", 4.0), ("open_clip", 1.0))]
    memory = [{"provider": p, "batch": 8, "dim": 4, "status": "ok", "peak_mib": mib}
              for p, mib in (("chunked", 1.0), ("eager", 10.0), ("open_clip", 5.0))]
    add_ratios(timings, "median_ms", "speedup_vs", speedup=True)
    add_ratios(memory, "peak_mib", "memory_vs", speedup=False)
    assert timings[0]["speedup_vs_eager"] == 2.0 and timings[0]["speedup_vs_open_clip"] == 0.5
    assert memory[0]["memory_vs_eager"] == 0.1 and memory[0]["memory_vs_open_clip"] == 0.2


def test_flops_count_the_products_each_provider_performs():
    # one product = 2 B^2 D; the stripe does 1 + 3, open_clip 2 + 4, two stripes 2 + 6, Inf-CL 2 + 8
    assert flops("chunked", "full", 10, 3) == 4 * 2 * 100 * 3
    assert flops("open_clip", "forward", 10, 3) == 2 * 2 * 100 * 3
    assert flops("chunked_2dir", "backward", 10, 3) == 6 * 2 * 100 * 3
    assert flops("inf_cl", "full", 10, 3) == 10 * 2 * 100 * 3


def test_targets_judge_the_measured_ratios():
    full = lambda p, ms: {"provider": p, "batch": 4096, "dim": 512, "mode": "full", "status": "ok",  # noqa: E731
                          "median_ms": ms}
    found = targets([full("chunked", 50.0), full("open_clip", 80.0), full("chunked_2dir", 70.0)], [],
                    torch.device("cpu"))
    by_base = {t["baseline"]: t for t in found}
    assert by_base["open_clip"]["met"] and by_base["open_clip"]["ratio"] == pytest.approx(50 / 80)
    assert not by_base["chunked_2dir"]["met"]  # 1.4x faster, 1.5x required


@pytest.mark.slow
def test_tile_sweep_script_runs_in_the_interpreter(tmp_path):
    """The GPU tile sweep, smoke-tested on CPU through the Triton interpreter: it loads the report's
    candidates, runs both kernels per candidate against the default configuration and writes its results."""
    out = tmp_path / "sweep.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "contrastive_tile_sweep.py"), "--device", "cpu", "--batch", "64",
           "--dims", "40", "--ds-rows", "64", "--limit", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"fwd", "bwd"} and len(rows) == 4
    assert all(r["err"] < 1e-4 and r["ms"] > 0 for r in rows), rows
