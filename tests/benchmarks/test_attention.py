"""`retina-bench attention`: the quick run end to end (nothing is asserted about the timings themselves)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks import cli
from benchmarks.attention import LONG_SHAPES, MODES, SHAPE_NAMES, SHAPES, add_speedups

CPU_PROVIDERS = ("sdpa", "eager")


def run_bench(out: Path, *flags: str) -> subprocess.CompletedProcess:
    # --device cpu: the same providers on a GPU machine too
    cmd = [sys.executable, "-m", "benchmarks", "attention", "--quick", "--device", "cpu", "--out", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench") / "r.json"
    return run_bench(out), out


@pytest.mark.slow
def test_quick_run_writes_results_table_and_plot(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "attention" and result["date"]
    assert result["device"]["kind"] == "cpu" and result["device"]["name"]
    assert {"python", "torch", "triton", "xformers"} <= result["versions"].keys()
    params = result["params"]
    assert params["providers"] == list(CPU_PROVIDERS)
    assert {"triton", "xformers"} <= params["skipped_providers"].keys()  # with the reasons
    assert [s["name"] for s in params["shapes"]] == [n for n in SHAPE_NAMES if n not in LONG_SHAPES]
    assert out.with_suffix(".png").stat().st_size > 0
    assert "median ms" in proc.stdout and "TFLOP/s" in proc.stdout


@pytest.mark.slow
def test_quick_run_times_every_point(quick_run):
    _, out = quick_run
    result = json.loads(out.read_text())
    got = {(t["provider"], t["shape"], t["mode"]): t for t in result["timings"]}
    assert len(got) == len(result["timings"])
    for provider in CPU_PROVIDERS:
        for shape in result["params"]["shapes"]:
            for mode in MODES:
                t = got[(provider, shape["name"], mode)]
                assert t["status"] == "ok", t
                assert len(t["runs_ms"]) == 2 and t["median_ms"] > 0 and t["tflops"] > 0


@pytest.mark.slow
def test_triton_runs_in_the_interpreter_when_asked_for(tmp_path):
    out = tmp_path / "r.json"
    proc = run_bench(out, "--providers", "triton", "sdpa", "--shapes", "decoder_self_64", "text_varlen_77",
                     "--modes", "full")
    assert proc.returncode == 0, proc.stderr
    timings = json.loads(out.read_text())["timings"]
    assert {(t["provider"], t["status"]) for t in timings} == {("triton", "ok"), ("sdpa", "ok")}
    assert "speedup_vs_sdpa" in timings[0]


def test_varlen_shape_packs_the_real_tokens_for_triton_only():
    from benchmarks.attention import key_lengths, make_inputs, provider_inputs

    shape = replace(next(s for s in SHAPES if s.varlen), batch=6, heads=1, head_dim=8)
    lengths = key_lengths(shape, seed=3)
    assert lengths[0] == shape.seq_k and all(1 <= n <= shape.seq_k for n in lengths)
    inputs = make_inputs(shape, "fp32", torch.device("cpu"), seed=3)
    packed = provider_inputs("triton", shape, inputs)
    assert packed["q"].shape == (sum(lengths), 1, 8) and packed["cu_seqlens"][-1] == sum(lengths)
    assert packed["q"].is_leaf and packed["q"].requires_grad
    second = packed["q"][lengths[0]:lengths[0] + lengths[1]]  # sequence 1's tokens, unpadded
    assert torch.equal(second, inputs["q"][1, :, :lengths[1]].transpose(0, 1))
    assert provider_inputs("sdpa", shape, inputs) is inputs and inputs["key_padding_mask"].sum() == sum(lengths)


def test_flops_count_dense_matmuls_halved_when_causal():
    shapes = {s.name: s for s in SHAPES}
    vit = shapes["vit_b16_224"]
    assert vit.flops("forward") == 4 * 32 * 12 * 197 * 197 * 64
    assert vit.flops("backward") == 2.5 * vit.flops("forward") and vit.flops("full") == 3.5 * vit.flops("forward")
    assert shapes["long_4096_causal"].flops("full") == shapes["long_4096"].flops("full") / 2


def test_speedups_are_relative_to_sdpa_and_eager():
    timings = [{"provider": p, "shape": "s", "mode": "full", "status": "ok", "median_ms": ms}
               for p, ms in (("triton", 1.0), ("sdpa", 2.0), ("eager", 8.0))]
    add_speedups(timings)
    assert timings[0]["speedup_vs_sdpa"] == 2.0 and timings[0]["speedup_vs_eager"] == 8.0


def test_help_is_the_attention_benchmarks_own(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attention", "-h"])
    assert exit_info.value.code == 0
    assert "retina-bench attention" in capsys.readouterr().out
