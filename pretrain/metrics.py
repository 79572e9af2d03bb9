"""Evaluation metrics reported by the fundus foundation-model papers.

FLAIR and KeepFIT report ACA (balanced accuracy), macro F1 and AUC for classification transfer, and
quadratic-weighted Cohen's kappa for diabetic-retinopathy grading; retrieval is reported as Recall@K.
Inputs may be torch tensors or numpy arrays; every scalar comes back as a Python float.

The classification metrics are `sklearn.metrics` calls. This module validates the inputs (1-D integer labels
inside [0, num_classes), equal lengths), fixes the set of classes each metric averages over, and turns
sklearn's warnings for the documented edge cases into the documented results:

- `confusion_matrix`: `confusion_matrix(labels=0..C-1)`, rows true classes, columns predicted; int64.
- `balanced_accuracy`: `balanced_accuracy_score`, the mean recall over the classes present in y_true. A class
  absent from y_true has no recall to measure and is left out of the mean.
- `macro_f1`: `f1_score(average="macro", labels=classes in y_true or y_pred)`, F1_c = 2 TP / (2 TP + FP + FN).
  A class only predicted or only true has F1 = 0; a class in neither is left out (its F1 is 0/0).
- `auc_ovr`: `roc_auc_score`; a tied positive/negative pair counts 1/2. Binary (C = 2, or 1-D scores): the AUC
  of class 1's score. Multiclass: `average="macro"` over the one-vs-rest indicator columns of the classes
  present in y_true. That is the number `roc_auc_score(multi_class="ovr")` computes, but that form is not used:
  it rejects scores whose rows do not sum to 1 (zero-shot cosine similarities and logits do not) and gives
  nan for a class absent from y_true, which this metric skips instead.
- `quadratic_kappa`: `cohen_kappa_score(labels=0..C-1, weights="quadratic")`, weights (i - j)^2 on the grade
  indices; nan where kappa is undefined (zero chance disagreement, e.g. both raters use a single class).

Recall@K is computed here: sklearn has no image-text retrieval recall, and ours needs its own tie rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

ArrayLike = Any  # torch.Tensor | np.ndarray | Sequence


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy copy of a tensor (any device, detached) or array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(y: ArrayLike, name: str, num_classes: int | None = None) -> np.ndarray:
    """1-D int64 labels, non-empty and (when num_classes is given) inside [0, num_classes)."""
    arr = _to_numpy(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels")
    arr = arr.astype(np.int64)
    if num_classes is not None and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} has labels outside [0, {num_classes})")
    return arr


def _pair(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (y_true, y_pred) label vectors of equal length."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = _labels(y_true, "y_true", num_classes)
    p = _labels(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred lengths differ: {t.size} vs {p.size}")
    return t, p


@contextmanager
def _documented_edge_cases() -> Iterator[None]:
    """Silence the sklearn warnings whose cases have the results the module doc states."""
    with warnings.catch_warnings():
        # a class only in y_pred is left out of the balanced accuracy
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # a 1 x 1 matrix is the right shape when every label is the same (or num_classes is 1)
        warnings.filterwarnings("ignore", message="A single label was found")
        # kappa with zero chance disagreement: replace_undefined_by gives the documented nan
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        yield


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts M[i, j] = #{n : y_true[n] = i and y_pred[n] = j}, shape (C, C), int64."""
    t, p = _pair(y_true, y_pred, num_classes)
    with _documented_edge_cases():
        return skm.confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> float:
    """ACA = mean over classes c present in y_true of TP_c / (TP_c + FN_c); see the module doc."""
    t, p = _pair(y_true, y_pred, num_classes)
    with _documented_edge_cases():
        return float(skm.balanced_accuracy_score(t, p))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> float:
    """Mean F1 over the classes in y_true or y_pred; see the module doc."""
    t, p = _pair(y_true, y_pred, num_classes)
    used = np.union1d(t, p)  # F1 of a class in neither is 0/0: leave it out rather than count it as 0
    return float(skm.f1_score(t, p, labels=used, average="macro"))


def auc_ovr(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Macro one-vs-rest ROC AUC: mean over classes c present in y_true of AUC(y == c, scores[:, c]).

    With C == 2 this is the binary AUC of class 1 (the score of class 1 ranks the positives).
    A 1-D scores vector is read as the binary positive-class score. Classes absent from y_true
    have no positives and are skipped; at least two classes must be present.
    """
    s = _to_numpy(scores).astype(np.float64)
    if s.ndim == 1:
        s = np.stack([-s, s], axis=1)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {s.shape}")
    num_classes = s.shape[1]
    t = _labels(y_true, "y_true", num_classes)
    if t.size != s.shape[0]:
        raise ValueError(f"y_true and scores lengths differ: {t.size} vs {s.shape[0]}")
    present = np.unique(t)
    if present.size < 2:
        raise ValueError("AUC needs at least two classes present in y_true")
    if num_classes == 2:
        return float(skm.roc_auc_score(t == 1, s[:, 1]))
    one_vs_rest = t[:, None] == present[None, :]  # (N, |present|) indicator, one column per present class
    return float(skm.roc_auc_score(one_vs_rest, s[:, present], average="macro"))


def quadratic_kappa(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights w_ij = (i - j)^2:

        kappa = 1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij,   E = outer(row sums of O, column sums of O) / N

    where O is the confusion matrix. Returns nan when chance disagreement is zero (both raters put
    every sample in the same single class), where kappa is undefined.
    """
    t, p = _pair(y_true, y_pred, num_classes)
    with _documented_edge_cases():
        kappa = skm.cohen_kappa_score(
            t, p, labels=np.arange(num_classes), weights="quadratic", replace_undefined_by=float("nan")
        )
    return float(kappa)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


# Cosines closer than this tie: far above float64 rounding of a dot product (~1e-16 x D), far below any
# difference a retrieval metric should resolve.
TIE_TOLERANCE = 1e-9


def recall_from_similarity(sim: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """R@K for queries in rows whose true match is the diagonal entry.

    rank_i = #{j != i : sim[i, j] >= sim[i, i] - TIE_TOLERANCE}: ties count against the true item, so a
    constant similarity puts the true item last. Ties are decided within a tolerance, not bit for bit:
    the cosines of identical vectors differ in their last bits with the BLAS summation order.
    Query i is a hit at K when rank_i < K.
    """
    true = np.diag(sim)[:, None]
    ahead = (sim >= true - TIE_TOLERANCE).sum(axis=1) - 1  # minus the true item itself
    return {k: float((ahead < k).mean()) for k in ks}


def retrieval_recall_at_k(
    image_emb: ArrayLike, text_emb: ArrayLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image-to-text and text-to-image Recall@K on cosine similarity; image i's true text is text i.

    Returns {"i2t_R@K": fraction, "t2i_R@K": fraction} for each K in ks.
    """
    img = _to_numpy(image_emb).astype(np.float64)
    txt = _to_numpy(text_emb).astype(np.float64)
    if img.ndim != 2 or txt.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {img.shape} and {txt.shape}")
    if img.shape != txt.shape:
        raise ValueError(f"image and text embeddings must have the same shape: {img.shape} vs {txt.shape}")
    if img.shape[0] == 0:
        raise ValueError("embeddings are empty")
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, got {tuple(ks)}")
    sim = _l2_normalise(img) @ _l2_normalise(txt).T
    i2t = recall_from_similarity(sim, ks)
    t2i = recall_from_similarity(sim.T, ks)
    out = {f"i2t_R@{k}": i2t[k] for k in ks}
    out.update({f"t2i_R@{k}": t2i[k] for k in ks})
    return out


def classification_report(
    y_true: ArrayLike, scores: ArrayLike, num_classes: int, grading: bool = False
) -> dict[str, Any]:
    """ACA, macro F1, macro OvR AUC (+ quadratic kappa when grading) for argmax predictions of scores.

    Returns {"aca", "macro_f1", "auc", ["kappa"], "confusion_matrix"}; the matrix is a list of lists
    so the report serialises to JSON as is.
    """
    s = _to_numpy(scores)
    if s.ndim != 2 or s.shape[1] != num_classes:
        raise ValueError(f"scores must be (N, {num_classes}), got shape {s.shape}")
    y_pred = s.argmax(axis=1)
    report: dict[str, Any] = {
        "aca": balanced_accuracy(y_true, y_pred, num_classes),
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "auc": auc_ovr(y_true, s),
    }
    if grading:
        report["kappa"] = quadratic_kappa(y_true, y_pred, num_classes)
    report["confusion_matrix"] = confusion_matrix(y_true, y_pred, num_classes).tolist()
    return report
