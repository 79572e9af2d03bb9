"""`pretrain.metrics` and `pretrain.probes`: hand-worked answers, then random inputs against sklearn.

`pretrain.metrics` is built on `sklearn.metrics`, so the hand-worked cases are its independent check; the
random comparisons pin the class sets and parameters it passes against sklearn's plain calls. The probes are
pure torch, and sklearn's LogisticRegression is their independent reference.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pretrain.metrics import (
    auc_ovr,
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    macro_f1,
    quadratic_kappa,
    retrieval_recall_at_k,
)
from pretrain.probes import k_shot_indices, linear_probe, zero_shot_scores

# ---------------------------------------------------------------- hand-worked cases

# Three classes, two samples each: class 0 always right, class 1 half right, class 2 never right.
Y_TRUE_3 = [0, 0, 1, 1, 2, 2]
Y_PRED_3 = [0, 0, 1, 0, 1, 1]


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(Y_TRUE_3, Y_PRED_3, 3).tolist() == [[2, 0, 0], [1, 1, 0], [0, 2, 0]]


def test_balanced_accuracy_hand_case():
    # recalls 2/2, 1/2, 0/2 -> ACA = (1 + 0.5 + 0) / 3
    assert balanced_accuracy(Y_TRUE_3, Y_PRED_3, 3) == pytest.approx(0.5)


def test_balanced_accuracy_skips_classes_absent_from_truth():
    # class 2 never occurs in y_true: only classes 0 (recall 1) and 1 (recall 0) count
    assert balanced_accuracy([0, 1], [0, 2], 3) == pytest.approx(0.5)


def test_macro_f1_hand_case():
    # F1 = 2TP / (2TP + FP + FN): class 0: 4/(4+1+0) = 0.8; class 1: 2/(2+2+1) = 0.4; class 2: TP = 0 -> 0
    assert macro_f1(Y_TRUE_3, Y_PRED_3, 3) == pytest.approx((0.8 + 0.4 + 0.0) / 3)


def test_macro_f1_counts_predicted_only_classes_and_skips_unused_ones():
    # class 0: TP 1, FN 1 -> 2/3; class 1 predicted but never true -> 0; class 2 in neither -> skipped
    assert macro_f1([0, 0], [0, 1], 3) == pytest.approx((2 / 3 + 0.0) / 2)


def test_kappa_perfect_constant_and_hand_case():
    assert quadratic_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(1.0)
    # a constant predictor makes O equal its chance matrix E, so kappa = 1 - 1 = 0
    assert quadratic_kappa([0, 1, 2, 0, 1, 2], [1] * 6, 3) == pytest.approx(0.0)
    # O = [[1,0,0],[0,0,1],[0,0,1]], w_ij = (i-j)^2: sum wO = 1; E rows = [1/3, 0, 2/3],
    # sum wE = 8/3 + 1 + 4/3 = 5 -> kappa = 1 - 1/5
    assert quadratic_kappa([0, 1, 2], [0, 2, 2], 3) == pytest.approx(0.8)


def test_kappa_undefined_when_both_raters_use_one_class():
    assert math.isnan(quadratic_kappa([1, 1], [1, 1], 3))


def test_auc_perfect_tied_reversed():
    y = [0, 0, 1, 1]
    assert auc_ovr(y, [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]) == pytest.approx(1.0)
    assert auc_ovr(y, [[0.5, 0.5]] * 4) == pytest.approx(0.5)  # every pair tied -> 1/2 each
    assert auc_ovr(y, [[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.9, 0.1]]) == pytest.approx(0.0)


def test_auc_partial_tie():
    # positives score 0.5, 0.9; negatives 0.1, 0.5: pairs 1 + 0.5 (tie) + 1 + 1 = 3.5 of 4
    assert auc_ovr([0, 0, 1, 1], np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.875)


def test_auc_multiclass_skips_absent_class():
    # class 2 never occurs; classes 0 and 1 are each ranked perfectly by their own column
    scores = [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.6, 0.2]]
    assert auc_ovr([0, 0, 1, 1], scores) == pytest.approx(1.0)


def test_auc_takes_scores_that_are_not_probabilities():
    # cosine similarities: negative, rows not summing to 1. sklearn's multi_class="ovr" rejects these; the
    # macro one-vs-rest AUC only ranks each column, so it is the mean of the per-class binary AUCs.
    rng = np.random.default_rng(4)
    y = np.concatenate([np.arange(4), rng.integers(0, 4, 26)])
    scores = rng.uniform(-1, 1, (30, 4)) + 0.3 * np.eye(4)[y]
    with pytest.raises(ValueError):
        skm.roc_auc_score(y, scores, multi_class="ovr")
    per_class = [skm.roc_auc_score(y == c, scores[:, c]) for c in range(4)]
    assert auc_ovr(y, scores) == pytest.approx(np.mean(per_class))
    assert auc_ovr(y, 5 * scores - 2) == pytest.approx(np.mean(per_class))  # ranks alone matter


def test_documented_edge_cases_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balanced_accuracy([0, 1], [0, 2], 3) == pytest.approx(0.5)  # class 2 only predicted
        assert balanced_accuracy([1, 1], [1, 1], 3) == 1.0  # a single label everywhere
        assert confusion_matrix([0, 0], [0, 0], 1).tolist() == [[2]]
        assert math.isnan(quadratic_kappa([2, 2], [2, 2], 3))
        assert macro_f1([0, 0], [1, 1], 3) == 0.0


def test_recall_identical_embeddings_and_constant_similarity():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(13, 8, generator=gen)
    perfect = retrieval_recall_at_k(emb, emb)
    assert set(perfect) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert all(v == 1.0 for v in perfect.values())
    # every similarity equal: the true item loses every tie and ranks last (13th), so R@10 = 0 too
    const = torch.ones(13, 8)
    assert all(v == 0.0 for v in retrieval_recall_at_k(const, const).values())


def test_recall_ties_survive_rounding_noise():
    """Equal similarities that differ in their last bits (another BLAS, another summation order) still tie."""
    from pretrain.metrics import recall_from_similarity

    gen = np.random.default_rng(0)
    sim = np.full((13, 13), 0.5) + gen.uniform(-1e-13, 1e-13, size=(13, 13))
    np.fill_diagonal(sim, 0.5 + 1e-13)  # the true item a hair ahead of every other: still a tie, ranked last
    assert recall_from_similarity(sim, (1, 12, 13)) == {1: 0.0, 12: 0.0, 13: 1.0}
    sim[np.arange(13), (np.arange(13) + 1) % 13] = 0.4  # one clearly worse item per row: ranked 12th of 13
    assert recall_from_similarity(sim, (1, 11, 12)) == {1: 0.0, 11: 0.0, 12: 1.0}


def test_recall_hand_case():
    # text 0 and 1 are swapped relative to their images; text 2 matches image 2
    img = np.eye(3)
    txt = np.eye(3)[[1, 0, 2]] + 0.1 * np.eye(3)
    r = retrieval_recall_at_k(img, txt, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(1 / 3) and r["t2i_R@1"] == pytest.approx(1 / 3)
    assert r["i2t_R@2"] == pytest.approx(1.0) and r["t2i_R@2"] == pytest.approx(1.0)


def test_classification_report_hand_case():
    scores = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    report = classification_report(torch.tensor([0, 0, 1, 1]), scores, 2, grading=True)
    # predictions 0, 0, 1, 0: recalls 1 and 1/2
    assert report["aca"] == pytest.approx(0.75)
    assert report["confusion_matrix"] == [[2, 0], [1, 1]]
    assert report["auc"] == pytest.approx(1.0)  # class-1 scores 0.7, 0.45 beat 0.1, 0.4
    assert set(report) == {"aca", "macro_f1", "auc", "kappa", "confusion_matrix"}
    assert all(isinstance(report[k], float) for k in ("aca", "macro_f1", "auc", "kappa"))
    assert "kappa" not in classification_report([0, 0, 1, 1], scores, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: balanced_accuracy([0, 1], [0], 2),
        lambda: macro_f1([], [], 2),
        lambda: confusion_matrix([0, 3], [0, 1], 3),
        lambda: auc_ovr([0, 1, 1], [[0.5, 0.5]] * 2),
        lambda: auc_ovr([1, 1], [[0.5, 0.5]] * 2),
        lambda: retrieval_recall_at_k(np.ones((3, 4)), np.ones((2, 4))),
        lambda: classification_report([0, 1], np.ones((2, 3)), 2),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- random inputs against sklearn


@pytest.mark.parametrize("seed,n,c", [(0, 37, 3), (1, 101, 5), (2, 53, 7), (3, 19, 4)])
def test_label_metrics_match_sklearn(seed, n, c):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, c, n))  # better than chance
    labels = sorted(set(y_true) | set(y_pred))
    assert balanced_accuracy(torch.from_numpy(y_true), y_pred, c) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred)
    )
    assert macro_f1(y_true, y_pred, c) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", labels=labels))
    assert quadratic_kappa(y_true, y_pred, c) == pytest.approx(
        skm.cohen_kappa_score(y_true, y_pred, labels=list(range(c)), weights="quadratic")
    )
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, c), skm.confusion_matrix(y_true, y_pred, labels=list(range(c)))
    )


@pytest.mark.parametrize("seed,n,c", [(0, 41, 2), (1, 77, 3), (2, 123, 6)])
def test_auc_matches_sklearn_with_ties(seed, n, c):
    rng = np.random.default_rng(seed)
    y_true = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])  # every class present
    raw = rng.random((n, c)) + 0.5 * np.eye(c)[y_true]
    scores = np.round(raw, 1)  # coarse rounding creates many ties
    probs = raw / raw.sum(axis=1, keepdims=True)  # sklearn's multiclass OvR wants rows summing to 1
    if c == 2:
        assert auc_ovr(y_true, scores) == pytest.approx(skm.roc_auc_score(y_true, scores[:, 1]))
    else:
        assert auc_ovr(y_true, torch.from_numpy(probs)) == pytest.approx(
            skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
        )
        # per-class tie handling, checked one column at a time
        ours = [auc_ovr((y_true == k).astype(int), scores[:, k]) for k in range(c)]
        ref = [skm.roc_auc_score(y_true == k, scores[:, k]) for k in range(c)]
        np.testing.assert_allclose(ours, ref)


# ---------------------------------------------------------------- probes


def _blobs(centre_seed: int, noise_seed: int, n_per_class: int, num_classes: int, dim: int, spread: float):
    """Unit-variance Gaussian blobs; the same centre_seed gives the same centres for train and test."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(centre_seed)) * spread
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(y.numel(), dim, generator=torch.Generator().manual_seed(noise_seed))
    return x, y


def test_linear_probe_separates_blobs_and_agrees_with_sklearn():
    num_classes, wd = 4, 1e-3
    x, y = _blobs(0, 1, 61, num_classes, 9, spread=4.0)
    x_test, y_test = _blobs(0, 2, 37, num_classes, 9, spread=4.0)  # same centres, fresh points
    scores = linear_probe(x, y, x_test, num_classes, weight_decay=wd)
    assert scores.shape == (x_test.shape[0], num_classes)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(x_test.shape[0]))
    pred = scores.argmax(dim=1)
    assert (pred == y_test).float().mean() >= 0.95
    # deterministic: a second fit gives the same numbers
    torch.testing.assert_close(linear_probe(x, y, x_test, num_classes, weight_decay=wd), scores)

    # sklearn minimises sum CE + ||W||^2 / (2C); ours is mean CE + wd/2 ||W||^2, so C = 1 / (wd N)
    scaler = StandardScaler().fit(x.numpy())
    ref = LogisticRegression(C=1.0 / (wd * x.shape[0]), max_iter=2000).fit(scaler.transform(x.numpy()), y.numpy())
    ref_pred = ref.predict(scaler.transform(x_test.numpy()))
    assert (pred.numpy() == ref_pred).mean() >= 0.9


def test_linear_probe_agrees_with_sklearn_on_overlapping_blobs():
    # overlapping classes make the decision boundary matter, so agreement is a real check
    num_classes, wd = 3, 1e-2
    x, y = _blobs(3, 4, 45, num_classes, 6, spread=1.0)
    x_test, _ = _blobs(3, 5, 33, num_classes, 6, spread=1.0)
    probs = linear_probe(x, y, x_test, num_classes, weight_decay=wd).numpy()
    scaler = StandardScaler().fit(x.numpy())
    ref = LogisticRegression(C=1.0 / (wd * x.shape[0]), max_iter=2000).fit(scaler.transform(x.numpy()), y.numpy())
    ref_probs = ref.predict_proba(scaler.transform(x_test.numpy()))
    assert (probs.argmax(axis=1) == ref_probs.argmax(axis=1)).mean() >= 0.9
    # same convex objective, so the fitted probabilities match too (both solvers stop near the optimum)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-2)


def test_k_shot_indices_counts_and_determinism():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7 + [4] * 1)  # class 3 absent, classes 1 and 4 short
    idx = k_shot_indices(labels, k=5, seed=7)
    assert idx.dtype == torch.long
    assert torch.equal(idx, torch.sort(idx).values)
    assert len(set(idx.tolist())) == idx.numel()
    counts = torch.bincount(labels[idx], minlength=5).tolist()
    assert counts == [5, 3, 5, 0, 1]
    assert torch.equal(k_shot_indices(labels, 5, seed=7), idx)
    draws = {tuple(k_shot_indices(labels, 5, seed=s).tolist()) for s in range(5)}
    assert len(draws) > 1  # the seed actually changes the draw


def test_zero_shot_scores_pick_the_nearest_prompt_ensemble():
    gen = torch.Generator().manual_seed(0)
    num_classes, prompts, dim = 5, 3, 16
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=-1)
    # prompts of a class scatter around its centre, with very different norms
    scale = torch.rand(num_classes, prompts, 1, generator=gen) * 10 + 0.1
    text = (centres[:, None, :] + 0.05 * torch.randn(num_classes, prompts, dim, generator=gen)) * scale
    y = torch.arange(num_classes).repeat(4)
    images = (centres[y] + 0.05 * torch.randn(y.numel(), dim, generator=gen)) * 3.0
    scores = zero_shot_scores(images, text)
    assert scores.shape == (y.numel(), num_classes)
    assert scores.abs().max() <= 1.0 + 1e-6  # cosine similarities
    assert torch.equal(scores.argmax(dim=1), y)
