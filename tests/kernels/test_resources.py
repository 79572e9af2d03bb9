"""The compile-only Hopper resource report: the shipped contrastive tiles compile for sm_90a without a GPU,
without spills, within an H100's shared memory, on wgmma; every configuration of the attention autotune space
(bf16, fp16, fp32; Dh 32, 64, 128) compiles without spills. A change that spills fails here, not on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kernels.resources import H100_MAX_SHARED

pytestmark = pytest.mark.slow

# The heaviest variants (multi-hot intersections + exclusion + Jaccard weights, rows and columns) at the
# widest shipped D, and the plain CLIP path at D = 512.
SNIPPET = """
import json
from kernels.resources import contrastive_cases, run_case
cases = [c for c in contrastive_cases(dims=(512, 768), dtypes=("bf16",))
         if c.params["columns"] and ((c.dim == 768 and c.params["labels"] == "multi-hot-jaccard-exclude")
                                     or (c.dim == 512 and c.params["labels"] == "no-labels"))]
print(json.dumps([row for case in cases for row in run_case(case)]))
"""


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_both_kernels_of_both_variants_are_compiled(rows):
    assert sorted((r["kernel"], r["dim"]) for r in rows) == [("ds", 512), ("ds", 768), ("fwd", 512), ("fwd", 768)]
    assert all("error" not in r for r in rows), rows


def test_no_spills_shared_memory_within_h100_and_wgmma(rows):
    for r in rows:
        assert r["spill_store_bytes"] == r["spill_load_bytes"] == r["local_bytes"] == 0, r
        assert 0 < r["shared_bytes"] <= H100_MAX_SHARED, r
        assert r["wgmma"] and 0 < r["registers"] <= 255, r
        assert r["ok"] and r["problems"] == [], r


def test_the_judge_flags_what_it_should():
    from kernels.resources import judge

    good = {"family": "contrastive", "dtype": "bf16", "spill_store_bytes": 0, "spill_load_bytes": 0,
            "local_bytes": 0, "shared_bytes": 96 * 1024, "wgmma": True}
    assert judge(good) == {"ok": True, "problems": []}
    assert judge(good | {"spill_store_bytes": 48})["problems"] == ["spills"]
    assert judge(good | {"shared_bytes": 228 * 1024})["problems"] == ["shared memory over 227 KiB"]
    assert judge(good | {"wgmma": False})["problems"] == ["no wgmma"]
    assert judge(good | {"wgmma": False, "dtype": "fp32"})["ok"]  # exact fp32 dots run on the FMA units
    assert judge({"family": "attention", "error": "out of resources"})["problems"] == ["does not compile"]


# ------------------------------------------------------------------------------------------- attention

ATTENTION_SNIPPET = """
import json, os
from concurrent.futures import ProcessPoolExecutor
from kernels.resources import attention_cases, run_case
cases = attention_cases(head_dims=(32, 64, 128), dtypes=("bf16", "fp16", "fp32"))
with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    print(json.dumps([row for rows in pool.map(run_case, cases) for row in rows]))
"""


@pytest.fixture(scope="module")
def attention_rows() -> list[dict]:
    """Every configuration the attention autotuner may try (its pruned space), each compiled once for sm_90a."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", ATTENTION_SNIPPET], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_attention_report_compiles_exactly_the_tune_table(attention_rows):
    from kernels.attention.triton_tuning import TUNE_SPACE

    def entry(row):  # back to the table's (program block, looped block, warps, stages)
        config = dict(item.split("=") for item in row["config"].split())
        outer, inner = ("BLOCK_N", "BLOCK_M") if row["kernel"] == "dkdv" else ("BLOCK_M", "BLOCK_N")
        return tuple(int(config[k]) for k in (outer, inner, "num_warps", "num_stages"))

    seen = {}
    for row in attention_rows:
        seen.setdefault((row["kernel"], row["dtype"] == "fp32", row["dim"]), []).append(entry(row))
    assert len(seen) == 3 * 2 * 3  # kernels x (16-bit: bf16 and fp16 share a row; fp32) x Dh
    for (kernel, fp32, dim), entries in seen.items():
        expected = list(TUNE_SPACE[(kernel, fp32, dim)])
        assert sorted(entries) == sorted(expected * (1 if fp32 else 2)), (kernel, fp32, dim)


def test_no_attention_configuration_spills_on_sm90(attention_rows):
    for r in attention_rows:
        assert "error" not in r, r
        assert r["spill_store_bytes"] == r["spill_load_bytes"] == r["local_bytes"] == 0, r
        # 240, not 255: the table keeps a margin for an older Triton / ptxas allocating a few more
        assert 0 < r["shared_bytes"] <= H100_MAX_SHARED and 0 < r["registers"] <= 240, r
        assert r["ok"], r
