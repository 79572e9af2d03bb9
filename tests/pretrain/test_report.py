"""`pretrain.report`: the Markdown report and its PNGs from a hand-made run folder and metrics dict."""

from __future__ import annotations

import json
from pathlib import Path

from pretrain.config import save_config
from pretrain.report import read_training_log, write_report
from pretrain.train import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(run: Path) -> None:
    cfg = TrainConfig(method="flair", loss_weights={"contrastive": 1.0})
    cfg.run.steps = 3
    save_config(cfg, run / "config.yaml")
    records = [
        {"step": 1, "loss": 2.0, "contrastive": 2.0, "lr": 1e-4, "logit_scale": 14.3, "samples_per_s": 10.0,
         "mem_mib": 800.0, "data_skipped": 0},
        {"step": 2, "loss": 1.5, "contrastive": 1.5, "lr": 1e-4, "logit_scale": 14.3, "samples_per_s": 20.0,
         "mem_mib": 900.0, "data_skipped": 1},
        # a resumed run logged step 2 again: this later record is the one that counts
        {"step": 2, "loss": 1.25, "contrastive": 1.25, "lr": 1e-4, "logit_scale": 14.3, "samples_per_s": 30.0,
         "mem_mib": 850.0, "data_skipped": 1},
        {"step": 3, "loss": 0.75, "contrastive": 0.75, "lr": 1e-4, "logit_scale": 14.4, "samples_per_s": 30.0,
         "mem_mib": 860.0, "data_skipped": 2},
    ]
    lines = [json.dumps(r) for r in records] + ['{"step": 4, "loss"']  # a crash cut the last line short
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


METRICS = {
    "checkpoint": "run", "eval_shards": "shards/eval", "split": "test",
    "datasets": {
        "SYNTH DR/GRADING": {
            "classes": ["no diabetic retinopathy", "mild diabetic retinopathy"], "n": 4, "grading": True,
            "zero_shot": {"aca": 0.75, "macro_f1": 0.7333, "auc": 0.875, "kappa": None,
                          "confusion_matrix": [[2, 0], [1, 1]]},
            "linear_probe": {"aca": 1.0, "macro_f1": 1.0, "auc": 1.0, "kappa": 1.0, "n_train": 2, "n_test": 2,
                             "confusion_matrix": [[1, 0], [0, 1]]},
            "k_shot": {"1": {"repeats": 2, "aca": 0.5, "aca_std": 0.25, "macro_f1": 0.5, "macro_f1_std": 0.0,
                             "auc": 0.5, "auc_std": 0.0}},
        },
    },
    "retrieval": {"split": "val", "n": 8, "i2t_R@1": 0.125, "i2t_R@5": 0.625, "i2t_R@10": 1.0,
                  "t2i_R@1": 0.25, "t2i_R@5": 0.75, "t2i_R@10": 1.0},
}


def test_training_log_keeps_the_last_record_of_each_step(tmp_path):
    make_run(tmp_path)
    records = read_training_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["loss"] == 1.25
    assert read_training_log(tmp_path / "missing") == []


def test_report_markdown_and_pngs(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    make_run(run)
    path = write_report(run, METRICS, out)
    assert path == out / "report.md"
    text = path.read_text()
    for needle in ("# Run report: run", "| method | flair |", "| steps logged | 3 |", "| last step | 3 |",
                   "| final loss | 0.7500 |", "| samples/s (mean of intervals) | 23.3 |",
                   "| data lost (samples) | 2 |",
                   "ACA", "macro-F1", "AUC", "kappa", "R@1", "| image → text | 0.125 | 0.625 | 1.000 |",
                   "0.500 ± 0.250", "(loss.png)", "(confusion_SYNTH_DR_GRADING.png)", "[metrics.json]"):
        assert needle in text, needle
    # kappa undefined (null in metrics.json) renders as "-"
    assert "| SYNTH DR/GRADING | 2 | 4 | 0.750 | 0.733 | 0.875 | - |" in text
    for png in ("loss.png", "confusion_SYNTH_DR_GRADING.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG and len(data) > 1000


def test_report_without_training_log_or_config(tmp_path):
    path = write_report(tmp_path / "run", {"datasets": {}}, tmp_path / "out")
    text = path.read_text()
    assert "No config.yaml" in text and "No metrics.jsonl records" in text
    assert not (tmp_path / "out" / "loss.png").exists()


def test_confusion_png_for_many_classes(tmp_path):
    from pretrain.report import plot_confusion

    n = 12
    plot_confusion([[i * j for j in range(n)] for i in range(n)], [f"class {i}" for i in range(n)], "t",
                   tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG


FLAIR_ONLY = {  # `--protocol flair --adapters tip_adapter`: each dataset holds only its FLAIR block
    "checkpoint": "run", "protocol": "flair", "adapters": ["tip_adapter"],
    "datasets": {"25_REFUGE": {"flair": {
        "class_list": "FLAIR 25_REFUGE", "classes": ["no glaucoma", "glaucoma"], "n": 10, "counts": [6, 4],
        "zero_shot": {"aca": 0.625, "macro_f1": 0.6, "auc": 0.7, "kappa": 0.25, "confusion_matrix": [[4, 2], [2, 2]]},
        "linear_probe": {"folds": 5, "aca": 0.8, "aca_std": 0.1, "auc": 0.9, "auc_std": 0.05, "n_train": 7,
                         "n_test": 2},
        "adapters": {"tip_adapter": {"1": {"folds": 5, "aca": 0.55, "aca_std": 0.125, "n_train": 2, "n_test": 2}}},
    }}},
}


def test_report_and_table_name_flairs_protocols(tmp_path):
    from pretrain.commands.evaluate import format_table

    text = write_report(tmp_path / "run", FLAIR_ONLY, tmp_path / "out").read_text()
    assert "## Zero-shot classification" not in text  # our protocols did not run
    for needle in ("## FLAIR protocols", "| 25_REFUGE | FLAIR 25_REFUGE | 2 | 10 | 0.625 | 0.600 | 0.700 | 0.250 |",
                   "| 25_REFUGE | 5 | 0.800 ± 0.100 | - | 0.900 ± 0.050 | - |",
                   "| 25_REFUGE | tip_adapter | 1 | 5 | 0.550 ± 0.125 | - | - | - |"):
        assert needle in text, needle
    table = format_table(FLAIR_ONLY).splitlines()
    assert table[0].endswith("tip_adapter 1-shot ACA")
    assert table[1].split()[:2] == ["25_REFUGE", "[flair]"] and table[1].split()[-1] == "0.550"
