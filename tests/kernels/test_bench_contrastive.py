"""`retina-bench contrastive`: the quick run end to end and the CPU memory probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.bench_contrastive import MODES, add_ratios, cpu_peaks

CPU_PROVIDERS = ("chunked", "eager", "open_clip")
QUICK_BATCH, QUICK_DIM = (128, 256), (32,)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench") / "r.json"
    # --device cpu: the same providers on a GPU machine too
    cmd = [sys.executable, "-m", "kernels.bench", "contrastive", "--quick", "--device", "cpu",
           "--out", str(out), "--no-memory-check"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300), out


@pytest.mark.slow
def test_quick_run_writes_results_and_plot(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"]["kind"] == "cpu" and result["device"]["cores"] >= 1 and result["device"]["name"]
    assert {"python", "torch", "triton", "open_clip"} <= result["versions"].keys()
    assert result["params"]["skipped_providers"] == {"triton": "needs CUDA"}
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
