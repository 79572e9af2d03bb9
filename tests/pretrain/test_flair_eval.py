"""FLAIR's evaluation protocols (pretrain.flair_prompts, pretrain.flair_protocols, pretrain.adapters) against
independent references written here: FLAIR's split loop restated literally, scikit-learn called directly, the
Tip-Adapter formulas in float64, and (when the public FLAIR mirror is on this machine) FLAIR's own dictionary
and experiment settings parsed from its source."""

from __future__ import annotations

import ast
import os
import random
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from pretrain.adapters import TIP_ALPHA, TIP_BETA, clip_adapter, tip_adapter, tip_adapter_f
from pretrain.flair_prompts import flair_prompt_phrases, load_flair_reference
from pretrain.flair_protocols import (flair_class_embeddings, flair_linear_probe, flair_split, flair_zero_shot,
                                      score_flair_linear_probe)

# A clone of github.com/jusiro/FLAIR (work tree or bare) to check our data file against; unset: those tests skip.
FLAIR_REPO = os.environ.get("RETINASCALE_FLAIR_REPO")


# ----------------------------------------------------------------------------- prompts and class lists


def test_prompt_phrases_follow_compute_text_embeddings_rule():
    definitions = {"glaucoma": ["optic nerve abnormalities", "large cup"], "no glaucoma": ["no glaucoma"],
                   "myopic maculopathy grade one": ["tessellated fundus"]}
    assert flair_prompt_phrases("glaucoma", definitions) == ["optic nerve abnormalities", "large cup", "glaucoma"]
    assert flair_prompt_phrases("no glaucoma", definitions) == ["no glaucoma"]  # the name is a phrase already
    assert flair_prompt_phrases("myopic maculopathy grade one", definitions) == ["tessellated fundus"]
    assert flair_prompt_phrases("drusen", definitions) == ["drusen"]  # outside the dictionary: the name alone
    assert definitions["glaucoma"] == ["optic nerve abnormalities", "large cup"]  # not mutated


def test_reference_file_classes_and_prompts():
    ref = load_flair_reference()
    assert ref.classes("13_FIVES") == ["normal", "age related macular degeneration", "diabetic retinopathy",
                                       "glaucoma"]
    assert ref.classes("25_REFUGE") == ["no glaucoma", "glaucoma"]
    assert ref.classes("SYNTH_FIVES") is None
    assert ref.prompts("no diabetic retinopathy") == ["A fundus photograph of no diabetic retinopathy",
                                                      "A fundus photograph of no microaneurysms"]
    assert ref.prompts("pathologic myopia") == [
        "A fundus photograph of anomalous disc, macular atrophy and possible tessellation",
        "A fundus photograph of pathologic myopia"]
    assert ref.prompts("hypertensive") == ["A fundus photograph of hypertensive"]


def _flair_source(path: str) -> ast.Module:
    if not FLAIR_REPO:
        pytest.skip("RETINASCALE_FLAIR_REPO (a clone of FLAIR's repository) is not set")
    text = subprocess.run(["git", "-C", FLAIR_REPO, "show", f"HEAD:{path}"], capture_output=True,
                          text=True, check=True).stdout
    return ast.parse(text)


def test_reference_file_matches_flair_source():
    """Our data file restates FLAIR's: every definition and every dataset's target list, in order."""
    tree = _flair_source("flair/modeling/dictionary.py")
    definitions = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                       and getattr(n.targets[0], "id", None) == "definitions")
    ref = load_flair_reference()
    assert ref.definitions == {name: definitions[name] for name in ref.definitions}
    settings = {}
    for node in ast.walk(_flair_source("local_data/experiments.py")):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            name = ast.literal_eval(node.test.comparators[0])
            setting = node.body[0].value
            targets = ast.literal_eval(setting.values[[ast.literal_eval(k) for k in setting.keys].index("targets")])
            settings[name] = sorted(targets, key=targets.get)
    assert settings and {d: ref.classes(d) for d in settings} == settings
    classes = {c for cs in settings.values() for c in cs}
    assert set(ref.definitions) == {c for c in classes if c in definitions}


# ----------------------------------------------------------------------------- splits


def literal_flair_split(labels: list[int], seed: int, train: str | int, test: str) -> tuple[list[int], list[int]]:
    """get_dataloader_splits restated on dicts, with the global random as FLAIR uses it."""
    get = lambda spec, n: int(int(spec[:-1]) / 100 * n) if "%" in str(spec) else int(spec)  # noqa: E731
    data = [{"row": i, "label": y} for i, y in enumerate(labels)]
    state = random.getstate()
    random.seed(seed)
    random.shuffle(data)
    random.setstate(state)
    shuffled = [d["label"] for d in data]
    out_train, out_test = [], []
    for label in np.unique(shuffled):
        idx = list(np.squeeze(np.argwhere(np.array(shuffled) == label), axis=1))
        n_test, n_train = get(test, len(idx)), get(train, len(idx))
        out_test += [data[i]["row"] for i in idx[:n_test]]
        out_train += [data[i]["row"] for i in idx[n_test:n_test + n_train]]
    return out_train, out_test


@pytest.mark.parametrize("train", ["80%", 3])
def test_split_matches_flairs_loop(train):
    labels = np.repeat([2, 0, 1, 3], [7, 12, 3, 1])[np.random.default_rng(5).permutation(23)]
    for seed in range(5):
        ours = flair_split(labels, seed, train=train, test="20%")
        assert [list(x) for x in ours] == list(literal_flair_split(labels.tolist(), seed, train, "20%"))
    train_idx, test_idx = flair_split(labels, 0)
    # int() floors: 7 -> 1 test + 5 train, 12 -> 2 + 9, 3 -> 0 + 2, 1 -> 0 + 0 (left out of both)
    assert np.bincount(labels[test_idx], minlength=4).tolist() == [2, 0, 1, 0]
    assert np.bincount(labels[train_idx], minlength=4).tolist() == [9, 2, 5, 0]
    assert not set(train_idx) & set(test_idx)


# ----------------------------------------------------------------------------- zero-shot and linear probe


def test_zero_shot_averages_without_renormalising():
    gen = torch.Generator().manual_seed(3)
    prompts = [F.normalize(torch.randn(p, 9, generator=gen, dtype=torch.float64), dim=-1) for p in (3, 1, 4)]
    images = F.normalize(torch.randn(11, 9, generator=gen, dtype=torch.float64), dim=-1)
    class_emb = flair_class_embeddings([p.float() for p in prompts])
    probs = flair_zero_shot(images.float(), class_emb, 37.5)
    text = torch.stack([p.mean(0) for p in prompts])
    expected = torch.softmax(37.5 * images @ text.T, dim=-1)
    torch.testing.assert_close(probs.double(), expected, atol=1e-5, rtol=1e-5)
    renormalised = torch.softmax(37.5 * images @ F.normalize(text, dim=-1).T, dim=-1)
    assert not torch.allclose(probs.double(), renormalised, atol=1e-3)


def separable(n_per_class: list[int], dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)[rng.permutation(sum(n_per_class))]
    centres = rng.normal(size=(len(n_per_class), dim)) * 2
    return (centres[labels] + rng.normal(size=(labels.size, dim))).astype(np.float32), labels


def test_linear_probe_is_sklearns_and_folds_average_like_flair():
    x, labels = separable([9, 14, 6], 13, seed=1)
    probs = flair_linear_probe(x[:20], labels[:20], x[20:], 3)
    sk = LogisticRegression(C=0.316, class_weight="balanced", max_iter=1000, random_state=0).fit(x[:20], labels[:20])
    np.testing.assert_allclose(probs, sk.predict_proba(x[20:]), atol=1e-6)

    out = score_flair_linear_probe(torch.from_numpy(x), labels, 3, grading=False, folds=5)
    acas = []
    for seed in range(5):
        tr, te = literal_flair_split(labels.tolist(), seed, "80%", "20%")
        fit = LogisticRegression(C=0.316, class_weight="balanced", max_iter=1000, random_state=0).fit(x[tr], labels[tr])
        acas.append(balanced_accuracy_score(labels[te], fit.predict(x[te])))
    assert out["folds"] == 5 and out["n_train"] == 7 + 11 + 4 and out["n_test"] == 1 + 2 + 1
    assert out["aca"] == pytest.approx(np.mean(acas)) and out["aca_std"] == pytest.approx(np.std(acas))


def test_linear_probe_scores_zero_for_a_class_missing_from_training():
    x, labels = separable([5, 4], 6, seed=2)
    probs = flair_linear_probe(x, labels, x[:3], 3)
    assert probs.shape == (3, 3) and np.all(probs[:, 2] == 0) and np.allclose(probs.sum(1), 1)


# ----------------------------------------------------------------------------- adapters


def unit(rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=-1)


def tip_reference(x, keys, values, text) -> torch.Tensor:
    """Tip-Adapter's logits, float64: 100 x T^T + alpha * exp(-beta * (1 - x K^T)) L."""
    return 100 * x @ text.T + TIP_ALPHA * torch.exp(-TIP_BETA * (1 - x @ keys.T)) @ values


def test_tip_adapter_cache_logits_match_the_formula():
    gen = torch.Generator().manual_seed(7)
    train, test, text = unit(9, 17, gen), unit(5, 17, gen), unit(3, 17, gen) * 0.9
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1])
    probs = tip_adapter(train.float(), labels, test.float(), text.float(), 3)
    expected = torch.softmax(tip_reference(test, train, F.one_hot(labels, 3).double(), text), dim=-1)
    torch.testing.assert_close(probs.double(), expected, atol=1e-5, rtol=1e-4)
    # a class without training samples keeps its column (zero cache affinity)
    assert tip_adapter(train.float(), labels.clamp(max=1), test.float(), text.float(), 3).shape == (5, 3)


def test_tip_adapter_f_first_step_is_one_adamw_step_on_flairs_loss():
    """With one training sample and one epoch, the keys move by one AdamW step: W <- W (1 - lr wd) -
    lr g / (|g| + eps) (Adam's first step, bias-corrected), g the gradient of FLAIR's training loss."""
    gen = torch.Generator().manual_seed(11)
    train, test, text = unit(1, 8, gen), unit(4, 8, gen), unit(3, 8, gen) * 0.8
    label, scale = torch.tensor([2]), 21.0
    keys = train.clone().requires_grad_(True)
    values = F.one_hot(label, 3).double()
    cache = torch.exp(-TIP_BETA * (1 - train @ keys.T)) @ values / 1 * scale
    loss = F.cross_entropy(scale * train @ text.T + TIP_ALPHA * cache, label)
    (grad,) = torch.autograd.grad(loss, keys)
    lr, wd, eps = 1e-3, 1e-2, 1e-4
    stepped = train * (1 - lr * wd) - lr * grad / (grad.abs() + eps)
    expected = torch.softmax(tip_reference(test, stepped, values, text), dim=-1)
    ours = tip_adapter_f(train.float(), label, test.float(), text.float(), 3, scale, epochs=1)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-4)
    untrained = tip_adapter_f(train.float(), label, test.float(), text.float(), 3, scale, epochs=0)
    torch.testing.assert_close(untrained, tip_adapter(train.float(), label, test.float(), text.float(), 3))


def test_clip_adapter_is_seeded_and_returns_probabilities():
    gen = torch.Generator().manual_seed(13)
    train, test, text = unit(7, 12, gen).float(), unit(5, 12, gen).float(), unit(3, 12, gen).float()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    first = clip_adapter(train, labels, test, text, 30.0, seed=4, epochs=3)
    assert first.shape == (5, 3) and torch.allclose(first.sum(1), torch.ones(5))
    assert torch.equal(first, clip_adapter(train, labels, test, text, 30.0, seed=4, epochs=3))
    assert not torch.equal(first, clip_adapter(train, labels, test, text, 30.0, seed=5, epochs=3))
    # training moves the prediction towards the training labels: the train set's own fit improves
    before = clip_adapter(train, labels, train, text, 30.0, seed=4, epochs=0)
    after = clip_adapter(train, labels, train, text, 30.0, seed=4, epochs=40)
    picked = lambda p: p[torch.arange(7), labels].log().mean()  # noqa: E731
    assert picked(after) > picked(before)


# ----------------------------------------------------------------------------- FLAIR's real split files


def test_real_split_files_label_every_sample_with_flairs_classes(reference_dir):
    """Each real transferability dataframe FLAIR evaluates: every first category as written is one of its
    classes, and the linear-probe folds on its real labels are FLAIR's (the literal loop above)."""
    import csv

    from pretrain.flair_protocols import flair_labels

    folder = reference_dir / "transferability" / "classification"
    checked = 0
    for path in sorted(folder.glob("*.csv")):
        if load_flair_reference().classes(path.stem) is None:
            continue  # KeepFIT's own sets (AMD, TAOP) are not FLAIR's
        with path.open(newline="", encoding="utf-8") as fh:
            firsts = [ast.literal_eval(row["categories"])[0] for row in csv.DictReader(fh)]
        classes, labels, source = flair_labels(path.stem, firsts, firsts, [])
        assert source == f"FLAIR {path.stem}" and labels.min() >= 0, path.name
        train, test = flair_split(labels, 3)
        assert [list(train), list(test)] == list(literal_flair_split(labels.tolist(), 3, "80%", "20%")), path.name
        checked += 1
    assert checked >= 5
