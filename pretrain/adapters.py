"""FLAIR's few-shot vision-language adapters on frozen embeddings: CLIP-Adapter, Tip-Adapter, Tip-Adapter-F.

Each function trains on (train_x, train_y) and returns the class probabilities of test_x, shape (N_test, C).
Features are the unit image embeddings (FLAIR's adapters run with project_features=True, norm_features=True)
and text_emb (C, D) FLAIR's class text embeddings (pretrain.flair_protocols.flair_class_embeddings). The
hyper-parameters and update rules follow flair/transferability/modeling/adapters.py (github.com/jusiro/FLAIR):

- clip_adapter (ClipAdapter): x' = normalise(0.2 * A(x) + 0.8 * x), A = Linear(D, D/4) ReLU Linear(D/4, D) ReLU
  without biases; 40 epochs of batch size 1 over one shuffled order, AdamW(lr 1e-3, eps 1e-4), cosine
  annealing stepped per sample over all steps; logits = scale * x' T^T for training and prediction.
- tip_adapter (TipAdapter, train=False): keys K = the training features, values V = one-hot labels;
  logits = 100 x T^T + alpha * exp(-beta * (1 - x K^T)) V with alpha = 1, beta = 5 (FLAIR predicts with a
  fixed 100, not the model's scale, and without the 1/N of its training loss).
- tip_adapter_f (train=True): K is learnable (initialised with the features), trained 40 epochs, batch size 1,
  AdamW(lr 1e-3, eps 1e-4), no schedule, on scale * x T^T + alpha * scale * exp(-beta (1 - x K^T)) V / N.
  FLAIR's learnable weight shares storage with its cache of keys, and each training query is read from that
  cache: the queries are the current (updated, detached) keys, not the original features; kept as FLAIR does.

What differs, on purpose: seeded, CPU-deterministic randomness (a torch.Generator for the initial weights, a
random.Random for the order) instead of FLAIR's global seeds; V has C columns even when a class has no training
sample (FLAIR's one_hot infers the width from the labels); FLAIR's Tip-Adapter applies its pretraining
augmentations to the test images, which frozen embeddings cannot, so none is applied.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ADAPTERS", "CLIP_ADAPTER_RATIO", "TIP_ALPHA", "TIP_BETA", "clip_adapter", "tip_adapter", "tip_adapter_f",
           "tip_logits"]

ADAPTERS = ("clip_adapter", "tip_adapter", "tip_adapter_f")
CLIP_ADAPTER_RATIO, CLIP_ADAPTER_REDUCTION = 0.2, 4
TIP_ALPHA, TIP_BETA = 1.0, 5.0
EPOCHS, LR, ADAM_EPS = 40, 1e-3, 1e-4


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu().float()


def _order(n: int, seed: int) -> list[int]:
    """One shuffled visiting order, reused every epoch (FLAIR shuffles once, before the epochs)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """A bias-free Linear with torch's default initialisation, drawn from `generator`."""
    layer = nn.Linear(fan_in, fan_out, bias=False)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    return layer


def _residual(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mixed = CLIP_ADAPTER_RATIO * adapter(x) + (1 - CLIP_ADAPTER_RATIO) * x
    return mixed / mixed.norm(dim=-1, keepdim=True)


def clip_adapter(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, text_emb: torch.Tensor,
                 logit_scale: float, *, seed: int = 0, epochs: int = EPOCHS) -> torch.Tensor:
    """CLIP-Adapter (module docstring); test probabilities softmax(scale * x' T^T)."""
    train_x, test_x, text = _as_float(train_x), _as_float(test_x), _as_float(text_emb)
    train_y = torch.as_tensor(train_y).long()
    dim = train_x.shape[1]
    generator = torch.Generator().manual_seed(seed)
    adapter = nn.Sequential(_linear(dim, dim // CLIP_ADAPTER_REDUCTION, generator), nn.ReLU(),
                            _linear(dim // CLIP_ADAPTER_REDUCTION, dim, generator), nn.ReLU())
    optimiser = torch.optim.AdamW(adapter.parameters(), lr=LR, eps=ADAM_EPS)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, epochs * len(train_x)))
    order = _order(len(train_x), seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for i in order:
                logits = logit_scale * _residual(adapter, train_x[i:i + 1]) @ text.T
                loss = F.cross_entropy(logits, train_y[i:i + 1])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
    with torch.no_grad():
        return torch.softmax(logit_scale * _residual(adapter, test_x) @ text.T, dim=-1)


def tip_logits(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """FLAIR's TipAdapter.adapter: 100 x T^T + alpha * exp(-beta * (1 - x K^T)) V."""
    affinity = x @ keys.T
    return 100 * (x @ text.T) + TIP_ALPHA * torch.exp(-(TIP_BETA - TIP_BETA * affinity)) @ values


def tip_adapter(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, text_emb: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """Tip-Adapter, training-free (module docstring); test probabilities softmax(tip_logits)."""
    values = F.one_hot(torch.as_tensor(train_y).long(), num_classes).float()
    with torch.no_grad():
        return torch.softmax(tip_logits(_as_float(test_x), _as_float(train_x), values, _as_float(text_emb)), dim=-1)


def tip_adapter_f(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, text_emb: torch.Tensor,
                  num_classes: int, logit_scale: float, *, seed: int = 0, epochs: int = EPOCHS) -> torch.Tensor:
    """Tip-Adapter-F: Tip-Adapter with keys fine-tuned as FLAIR does (module docstring)."""
    text = _as_float(text_emb)
    labels = torch.as_tensor(train_y).long()
    values = F.one_hot(labels, num_classes).float()
    keys = nn.Parameter(_as_float(train_x).clone())
    optimiser = torch.optim.AdamW([keys], lr=LR, eps=ADAM_EPS)
    n, order = len(keys), _order(len(keys), seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for i in order:
                query = keys[i:i + 1].detach()
                cache = torch.exp(-(TIP_BETA - TIP_BETA * (query @ keys.T))) @ values / n * logit_scale
                logits = logit_scale * (query @ text.T) + TIP_ALPHA * cache
                loss = F.cross_entropy(logits, labels[i:i + 1])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    with torch.no_grad():
        return torch.softmax(tip_logits(_as_float(test_x), keys.detach(), values, text), dim=-1)
