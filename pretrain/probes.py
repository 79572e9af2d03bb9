"""Transfer protocols on frozen features: linear probe, k-shot subsets and prompt-ensemble zero-shot.

These are the evaluation settings of FLAIR / KeepFIT: a logistic-regression probe on frozen image
features (optionally on k examples per class) and zero-shot classification by cosine similarity to
the text embeddings of class prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _standardise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean_train) / std_train for both sets; constant features keep std 1 so they map to 0."""
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def _fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights W (D, C) and bias b (C,) minimising

        L(W, b) = (1/N) sum_n CE(softmax(x_n W + b), y_n) + (weight_decay / 2) ||W||_F^2

    full batch with L-BFGS. The start is all zeros, so the fit is deterministic with no seed.
    The bias is not penalised (as in sklearn's LogisticRegression).
    """
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers often evaluate under torch.no_grad()
        optimiser.step(closure)
    return weight.detach(), bias.detach()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> torch.Tensor:
    """Multinomial logistic regression on standardised frozen features; returns test class
    probabilities softmax(x_test W + b), shape (N_test, C), float32 on the CPU.

    Features are standardised with the training mean/std, and the fit runs in float64 so the
    result does not depend on the features' dtype. weight_decay is the L2 strength on the mean
    loss, i.e. sklearn's C = 1 / (weight_decay * N_train).
    """
    train_x = torch.as_tensor(train_x).detach().cpu().to(torch.float64)
    test_x = torch.as_tensor(test_x).detach().cpu().to(torch.float64)
    train_y = torch.as_tensor(train_y).detach().cpu().long()
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_x.shape[0] == 0 or train_y.numel() != train_x.shape[0]:
        raise ValueError(f"need one label per training row, got {train_y.numel()} labels for {train_x.shape[0]} rows")
    if train_y.min() < 0 or train_y.max() >= num_classes:
        raise ValueError(f"train_y has labels outside [0, {num_classes})")
    train_x, test_x = _standardise(train_x, test_x)
    weight, bias = _fit_logistic(train_x, train_y, num_classes, weight_decay, max_iter)
    return torch.softmax(test_x @ weight + bias, dim=1).float()


def k_shot_indices(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of k examples drawn per class (every example of a class with fewer than k).

    The draw uses its own torch.Generator seeded with seed, so it is reproducible and leaves the
    global RNG untouched.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = torch.as_tensor(labels).detach().cpu().long()
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels):  # sorted, so the draw order is fixed
        members = torch.nonzero(labels == cls).flatten()
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:k]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(chosen)).values


def zero_shot_scores(image_emb: torch.Tensor, class_text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image to each class's prompt-ensemble embedding, shape (N, C).

    class_text_emb is (C, P, D) with P prompts per class ((C, D) means one prompt):
        t_c = normalise(mean_p normalise(e_{c,p})),   score[n, c] = <normalise(x_n), t_c>
    Normalising each prompt first keeps one long-norm prompt from dominating the class average.
    """
    image_emb = torch.as_tensor(image_emb)
    class_text_emb = torch.as_tensor(class_text_emb)
    if class_text_emb.ndim == 2:
        class_text_emb = class_text_emb.unsqueeze(1)
    if image_emb.ndim != 2 or class_text_emb.ndim != 3 or image_emb.shape[1] != class_text_emb.shape[2]:
        shapes = f"{tuple(image_emb.shape)} and {tuple(class_text_emb.shape)}"
        raise ValueError(f"expected image (N, D) and class text (C, P, D), got {shapes}")
    prompts = F.normalize(class_text_emb.float(), dim=-1)
    classes = F.normalize(prompts.mean(dim=1), dim=-1)
    images = F.normalize(image_emb.float(), dim=-1)
    return images @ classes.T
