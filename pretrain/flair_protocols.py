"""FLAIR's transfer protocols on frozen features, as its public code runs them (github.com/jusiro/FLAIR).

- zero-shot (adapters.py ZeroShot, model.py compute_text_embeddings): a class's text embedding is the plain
  mean of its prompts' unit embeddings (no renormalisation), logits = image_emb @ T^T * logit_scale, softmax;
  every sample of the dataset is a test sample (--shots_test 100% --folds 1).
- linear probe (adapters.py LinearProbe, the README's `--method lp --shots_train 80% --shots_test 20%
  --project_features False --norm_features False --folds 5`): scikit-learn LogisticRegression(C=0.316,
  class_weight="balanced", max_iter=1000, random_state=0) on the image tower's un-normalised pooled feature.
  The 5 "folds" are 5 repeated seeded splits (seed = fold index), not a k-fold partition: main_transferability
  .py calls get_dataloader_splits(..., seed=iFold) per fold, and folds may share test samples.
- adapters (pretrain.adapters) on the unit image embeddings: k shots per class to train, 20% to test, the same
  5 seeded splits (`--shots_train K --shots_test 20% --folds 5`).

The split (transferability/data/dataloader.py get_dataloader_splits): the samples in dataframe order are
shuffled with Python's random seeded by the fold; per class, in label order, the first int(0.2 n) shuffled
samples test and the next int(0.8 n) (or K) train. int() floors, so a class can leave a sample out of both.
Each fold's metrics come from pretrain.metrics; folds are summarised by mean and standard deviation, as
flair/utils/metrics.py average_folds_results does.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch

from pretrain.adapters import clip_adapter, tip_adapter, tip_adapter_f
from pretrain.flair_prompts import load_flair_reference
from pretrain.metrics import classification_report

__all__ = ["FLAIR_LP_C", "flair_class_embeddings", "flair_labels", "flair_linear_probe", "flair_split",
           "flair_zero_shot", "score_flair_adapters", "score_flair_dataset", "score_flair_linear_probe", "shots"]

FLAIR_LP_C, FLAIR_LP_MAX_ITER = 0.316, 1000
SUMMARY_METRICS = ("aca", "macro_f1", "auc", "kappa")


def shots(spec: str | int, n: int) -> int:
    """FLAIR's get_shots: "P%" -> int(P / 100 * n) (float product, floored as FLAIR does); K -> K."""
    if isinstance(spec, str) and spec.endswith("%"):
        return int(int(spec[:-1]) / 100 * n)
    return int(spec)


def flair_split(labels: np.ndarray, seed: int, train: str | int = "80%",
                test: str | int = "20%") -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into labels (given in dataframe order), in FLAIR's order (module docstring)."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)  # the same permutation as random.seed(seed); random.shuffle(data)
    shuffled = np.asarray(labels)[order]
    train_idx: list[int] = []
    test_idx: list[int] = []
    for cls in np.unique(shuffled):
        members = [order[i] for i in np.flatnonzero(shuffled == cls)]
        n_test, n_train = shots(test, len(members)), shots(train, len(members))
        test_idx += members[:n_test]
        train_idx += members[n_test:n_test + n_train]
    return np.array(train_idx, dtype=np.int64), np.array(test_idx, dtype=np.int64)


def flair_class_embeddings(prompt_emb: list[torch.Tensor]) -> torch.Tensor:
    """(C, D) from each class's (P_c, D) unit prompt embeddings: the mean, NOT renormalised (FLAIR)."""
    return torch.stack([e.float().mean(dim=0) for e in prompt_emb])


def flair_zero_shot(image_emb: torch.Tensor, class_emb: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(N, C) probabilities softmax(image_emb @ class_emb^T * logit_scale)."""
    return torch.softmax(image_emb.float() @ class_emb.float().T * logit_scale, dim=-1)


def flair_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int) -> np.ndarray:
    """(N_test, C) probabilities of FLAIR's LinearProbe; a class without training samples scores 0 (FLAIR
    would fail on the shape mismatch)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=FLAIR_LP_C, class_weight="balanced", max_iter=FLAIR_LP_MAX_ITER, random_state=0)
    model.fit(np.asarray(train_x, dtype=np.float32), np.asarray(train_y))
    probs = np.zeros((len(test_x), num_classes))
    probs[:, model.classes_] = model.predict_proba(np.asarray(test_x, dtype=np.float32))
    return probs


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"folds": len(runs)}
    for name in SUMMARY_METRICS:
        values = [r[name] for r in runs if r.get(name) is not None]
        if values:
            out[name], out[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
    return out


def _over_folds(labels: np.ndarray, folds: int, train: str | int, num_classes: int, grading: bool,
                fit_predict: Callable[[np.ndarray, np.ndarray, int], np.ndarray]) -> dict[str, Any]:
    """fit_predict(train_idx, test_idx, fold) -> test probabilities, on each seeded split; summarised."""
    runs, sizes = [], []
    for fold in range(folds):
        train_idx, test_idx = flair_split(labels, fold, train=train, test="20%")
        if np.unique(labels[train_idx]).size < 2 or test_idx.size == 0:
            return {"skipped": f"split {fold} has {test_idx.size} test samples and "
                               f"{np.unique(labels[train_idx]).size} training classes (FLAIR's split tests "
                               "int(20% of each class); a fit needs 1 test sample and 2 classes)"}
        probs = fit_predict(train_idx, test_idx, fold)
        runs.append(classification_report(labels[test_idx], probs, num_classes, grading=grading))
        sizes.append((int(train_idx.size), int(test_idx.size)))
    return {**_summary(runs), "n_train": sizes[0][0], "n_test": sizes[0][1]}


def score_flair_linear_probe(backbone: torch.Tensor, labels: np.ndarray, num_classes: int, grading: bool,
                             folds: int = 5) -> dict[str, Any]:
    """FLAIR's linear probe over `folds` seeded 80/20 splits (module docstring)."""
    x = backbone.float().cpu().numpy()
    return _over_folds(labels, folds, "80%", num_classes, grading,
                       lambda tr, te, _: flair_linear_probe(x[tr], labels[tr], x[te], num_classes))


def score_flair_adapters(image_emb: torch.Tensor, labels: np.ndarray, class_emb: torch.Tensor, logit_scale: float,
                         grading: bool, adapters: list[str], k_shots: list[int], folds: int = 5) -> dict[str, Any]:
    """{adapter: {k: fold summary}} for each adapter of pretrain.adapters.ADAPTERS named in `adapters`."""
    x, y, num_classes = image_emb.float().cpu(), torch.as_tensor(labels), class_emb.shape[0]
    runners = {
        "clip_adapter": lambda tr, te, seed: clip_adapter(x[tr], y[tr], x[te], class_emb, logit_scale, seed=seed),
        "tip_adapter": lambda tr, te, seed: tip_adapter(x[tr], y[tr], x[te], class_emb, num_classes),
        "tip_adapter_f": lambda tr, te, seed: tip_adapter_f(x[tr], y[tr], x[te], class_emb, num_classes,
                                                            logit_scale, seed=seed),
    }
    out: dict[str, Any] = {}
    for name in adapters:
        out[name] = {str(k): _over_folds(labels, folds, k, num_classes, grading,
                                         lambda tr, te, fold, run=runners[name]: run(tr, te, fold).numpy())
                     for k in k_shots}
    return out


def flair_labels(dataset: str, raw_firsts: list[str], firsts: list[str],
                 fallback: list[str]) -> tuple[list[str], np.ndarray, str]:
    """(classes, labels, class_source) for FLAIR's protocol: FLAIR's target list of `dataset` when FLAIR
    evaluates it (pretrain.flair_prompts), matched against each sample's first category as written (FLAIR
    reads `eval(categories)[0]`); else our `fallback` list, matched against the normalised first categories.
    A first category outside the list is label -1."""
    listed = load_flair_reference().classes(dataset)
    if listed is not None:
        classes, source = listed, f"FLAIR {dataset}"
    else:
        classes, source, raw_firsts = list(fallback), "ours", firsts
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index.get(c, -1) for c in raw_firsts], dtype=np.int64), source


def score_flair_dataset(image_emb: torch.Tensor, backbone: torch.Tensor | None, labels: np.ndarray,
                        class_emb: torch.Tensor, logit_scale: float, classes: list[str], *, adapters: list[str],
                        adapter_shots: list[int], folds: int) -> dict[str, Any]:
    """FLAIR's zero-shot, linear probe (when backbone features are given) and adapters on one dataset.
    Kappa is reported for every dataset, as FLAIR's classification_metrics does."""
    num_classes = len(classes)
    result: dict[str, Any] = {"classes": classes, "n": int(labels.size),
                              "counts": np.bincount(labels, minlength=num_classes).tolist()}
    probs = flair_zero_shot(image_emb, class_emb, logit_scale).numpy()
    result["zero_shot"] = classification_report(labels, probs, num_classes, grading=True)
    if backbone is not None:
        result["linear_probe"] = score_flair_linear_probe(backbone, labels, num_classes, True, folds)
    if adapters:
        result["adapters"] = score_flair_adapters(image_emb, labels, class_emb, logit_scale, True, adapters,
                                                  adapter_shots, folds)
    return result
