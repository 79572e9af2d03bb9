"""Two gloo processes: the distributed loss equals open_clip's local-loss/gather-with-grad and the
float64 single-process loss on the concatenated batch, for values and gradients, for every option."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss

from kernels import contrastive_loss, distributed_contrastive_loss
from kernels.contrastive import LossOptions, reference_contrastive_loss
from tests.helpers import run_ranks
from tests.kernels.contrastive_cases import embeddings, labels_for

pytestmark = pytest.mark.multiproc

WORLD, LOCAL, DIM = 2, 23, 40


CASES = {
    "identity": ("identity", {}, 0),
    "labels": ("multi_hot_positives", {"positives": "labels", "exclude_false_negatives": True,
                                       "weighting": "jaccard"}, 0),
    "class_ids_queue": ("class_positives", {"positives": "labels"}, 7),
    "cosine_exclude_queue": ("cosine_exclude", {"weighting": "cosine", "exclude_false_negatives": True}, 5),
    "identity_queue": ("identity", {}, 9),
}


def global_batch(case: str):
    """Every rank draws the same global batch (and queue) and keeps its own rows."""
    labels_kind, _, queue = CASES[case]
    g = torch.Generator().manual_seed(7)
    n = WORLD * LOCAL
    labels = labels_for(labels_kind, n + queue, g)
    image, text = embeddings(n, DIM, g).float(), embeddings(n, DIM, g).float()
    queues = {}
    if queue:
        queues = {"image_queue": embeddings(queue, DIM, g).float(), "text_queue": embeddings(queue, DIM, g).float()}
        if labels is not None:
            queues["queue_labels"] = labels[n:]
    return image, text, None if labels is None else labels[:n], queues


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def single_process_reference(case: str):
    """The float64 dense loss and gradients on the concatenated batch."""
    image, text, labels, queues = global_batch(case)
    image, text, scale = leaf(image), leaf(text), torch.tensor(20.0, requires_grad=True)
    dense = None if labels is None or labels.dim() == 1 else labels.long()
    if "queue_labels" in queues and queues["queue_labels"].dim() == 2:
        queues["queue_labels"] = queues["queue_labels"].long()
    loss = reference_contrastive_loss(image, text, scale, labels=labels if dense is None else dense,
                                      opts=LossOptions(**CASES[case][1]), **queues)
    loss.backward()
    return loss.detach().float(), image.grad.float(), text.grad.float(), scale.grad.float()


def worker(rank: int, world: int, case: str, backend: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world)  # the address: run_ranks' environment
    image, text, labels, queues = global_batch(case)
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    local_labels = None if labels is None else labels[rows]

    def run(loss_fn):
        img, txt, scale = leaf(image[rows]), leaf(text[rows]), torch.tensor(20.0, requires_grad=True)
        loss = loss_fn(img, txt, scale)
        loss.backward()
        return loss.detach(), img.grad, txt.grad, scale.grad

    ours = run(lambda i, t, s: distributed_contrastive_loss(i, t, s, labels=local_labels, chunk_size=8,
                                                            backend=backend, **CASES[case][1], **queues))
    if case == "identity":
        # same per-rank loss and embedding gradients; the scale's per-rank shares differ, their sum does not
        clip = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        theirs = run(lambda i, t, s: clip(i, t, s))
        for mine, ref in zip(ours[:3], theirs[:3]):
            torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
        scales = torch.stack([ours[3], theirs[3]])
        dist.all_reduce(scales)
        torch.testing.assert_close(scales[0], scales[1], atol=1e-6, rtol=1e-5)

    # averaged over ranks (what DDP does to gradients), the local losses are the global loss
    loss, g_image, g_text, g_scale = ours
    full = single_process_reference(case)
    mean_loss = loss.clone()
    dist.all_reduce(mean_loss)
    dist.all_reduce(g_scale)
    torch.testing.assert_close(mean_loss / world, full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_scale / world, full[3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_image / world, full[1][rows], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(g_text / world, full[2][rows], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_gloo_ranks_match_open_clip_and_single_process(case):
    run_ranks(worker, WORLD, case, "chunked")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the ranks hold CPU tensors: needs the "
                    "Triton interpreter (set by tests/kernels/conftest.py on machines without CUDA)")
@pytest.mark.parametrize("case", ["identity", "labels", "class_ids_queue"])
def test_two_gloo_ranks_with_the_triton_kernels(case):
    """The Triton stripe kernels (in the interpreter without a GPU, as the spawned ranks inherit
    TRITON_INTERPRET from tests/kernels/conftest.py) under the same checks."""
    run_ranks(worker, WORLD, case, "triton")


def test_not_distributed_is_the_plain_loss():
    image, text, _, _ = global_batch("identity")
    assert torch.equal(distributed_contrastive_loss(image, text, 10.0), contrastive_loss(image, text, 10.0))
