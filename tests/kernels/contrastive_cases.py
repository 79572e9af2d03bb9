"""Random contrastive problems shared by the kernel tests: fresh inputs, odd sizes, every option."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

OPTION_SETS = {
    "identity": {},
    "class_positives": {"positives": "labels"},
    "multi_hot_positives": {"positives": "labels"},
    "exclude": {"exclude_false_negatives": True},
    "jaccard": {"weighting": "jaccard", "alpha": 0.7},
    "cosine_exclude": {"weighting": "cosine", "exclude_false_negatives": True},
    "labels_jaccard_exclude": {"positives": "labels", "weighting": "jaccard", "exclude_false_negatives": True},
}


@dataclass
class Problem:
    image: torch.Tensor
    text: torch.Tensor
    scale: torch.Tensor
    labels: torch.Tensor | None = None
    kwargs: dict = field(default_factory=dict)

    def leaves(self) -> list[torch.Tensor]:
        return [self.image, self.text, self.scale]


def embeddings(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=-1)


def labels_for(name: str, n: int, generator: torch.Generator) -> torch.Tensor | None:
    if name == "identity":
        return None
    if name == "class_positives":
        ids = torch.randint(0, 4, (n,), generator=generator)
        ids[::7] = -1  # unlabelled samples match nothing
        return ids
    multi_hot = torch.rand(n, 37, generator=generator) < 0.08  # 37 classes: two int32 words, sparse sets
    multi_hot[:, 0] |= torch.rand(n, generator=generator) < 0.5  # ... and plenty of identical ones
    multi_hot[::9] = False
    return multi_hot


def make_problem(name: str, m: int, d: int, seed: int, *, keys: int = 0, queue: int = 0,
                 scale: float = 14.0) -> Problem:
    """M local pairs; optionally `keys` > M gathered keys around them and a queue of extra keys."""
    g = torch.Generator().manual_seed(seed)
    n = max(keys, m)
    offset = (n - m) // 2
    image_all, text_all = embeddings(n, d, g), embeddings(n, d, g)
    labels_all = labels_for(name, n + queue, g)
    kwargs = dict(OPTION_SETS[name])
    image = image_all[offset:offset + m].clone().float().requires_grad_()
    text = text_all[offset:offset + m].clone().float().requires_grad_()
    labels = None if labels_all is None else labels_all[offset:offset + m]
    if n > m:
        # keys are leaves of their own: the local block's gradient through the keys is compared separately
        kwargs.update(image_keys=image_all.float().requires_grad_(), text_keys=text_all.float().requires_grad_(),
                      offset=offset)
        if labels_all is not None:
            kwargs["key_labels"] = labels_all[:n]
    if queue:
        kwargs.update(image_queue=embeddings(queue, d, g).float(), text_queue=embeddings(queue, d, g).float())
        if labels_all is not None:
            kwargs["queue_labels"] = labels_all[n:]
    return Problem(image, text, torch.tensor(scale, requires_grad=True), labels, kwargs)


def reference_kwargs(problem: Problem) -> dict:
    """The same problem for `reference_contrastive_loss` (LossOptions instead of flat options)."""
    from kernels.contrastive.spec import LossOptions

    option_names = ("positives", "exclude_false_negatives", "weighting", "alpha")
    kwargs = {k: v for k, v in problem.kwargs.items() if k not in option_names}
    kwargs["opts"] = LossOptions(**{k: v for k, v in problem.kwargs.items() if k in option_names})
    return kwargs


def leaves(problem: Problem) -> list[torch.Tensor]:
    extra = [problem.kwargs[k] for k in ("image_keys", "text_keys") if k in problem.kwargs]
    return problem.leaves() + extra
