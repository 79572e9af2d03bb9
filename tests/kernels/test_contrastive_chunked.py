"""The chunked torch path and the public entry against the float64 reference and open_clip."""

from __future__ import annotations

import pytest
import torch
from open_clip.loss import ClipLoss

from kernels import contrastive_loss, pack_multi_hot
from kernels.contrastive import reference_contrastive_loss, triton_usable
from kernels.contrastive.spec import label_codes
from tests.kernels.contrastive_cases import OPTION_SETS, leaves, make_problem, reference_kwargs


def grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def compare(problem, backend: str, chunk_size: int = 1024, atol: float = 2e-5):
    ours = contrastive_loss(problem.image, problem.text, problem.scale, labels=problem.labels,
                            backend=backend, chunk_size=chunk_size, **problem.kwargs)
    ref = reference_contrastive_loss(problem.image, problem.text, problem.scale,
                                     labels=None if problem.labels is None else problem.labels.long(),
                                     **reference_kwargs(problem))
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours.double(), ref, atol=atol, rtol=1e-5)
    for mine, theirs in zip(grads(ours, leaves(problem)), grads(ref, leaves(problem))):
        torch.testing.assert_close(mine.double(), theirs.double(), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
@pytest.mark.parametrize("m, d, chunk", [(37, 40, 8), (37, 70, 16), (301, 64, 64), (130, 24, 1024)])
def test_square_batches_match_reference(name, m, d, chunk):
    compare(make_problem(name, m, d, seed=m + d), "chunked", chunk)


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_local_rows_against_gathered_keys_and_queues(name):
    compare(make_problem(name, 37, 40, seed=3, keys=53, queue=11), "chunked", chunk_size=16)


@pytest.mark.parametrize("name", ["identity", "labels_jaccard_exclude"])
def test_eager_backend_matches_reference(name):
    compare(make_problem(name, 45, 33, seed=5, queue=7), "eager")


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_identity_matches_open_clip(scale):
    p = make_problem("identity", 97, 48, seed=11, scale=scale)
    ours = contrastive_loss(p.image, p.text, p.scale, chunk_size=32)
    theirs = ClipLoss()(p.image, p.text, p.scale)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for mine, ref in zip(grads(ours, p.leaves()), grads(theirs, p.leaves())):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-4)


def test_every_negative_excluded_gives_zero_loss_and_no_nan():
    p = make_problem("identity", 19, 16, seed=2, scale=100.0)
    same = torch.zeros(19, dtype=torch.long)
    loss = contrastive_loss(p.image, p.text, p.scale, labels=same, exclude_false_negatives=True, chunk_size=4)
    assert loss.abs().item() < 1e-6
    assert all(torch.isfinite(g).all() and g.abs().max() < 1e-6 for g in grads(loss, p.leaves()))


def test_pack_multi_hot_and_popcounts():
    multi_hot = torch.zeros(3, 40, dtype=torch.bool)
    multi_hot[0, [0, 31, 32, 39]] = True
    multi_hot[2, 31] = True
    words = pack_multi_hot(multi_hot)
    assert words.dtype == torch.int32 and words.shape == (3, 2)
    assert words[0, 0].item() == 1 - 2**31 and words[0, 1].item() == 1 + 2**7 and words[2, 0].item() == -(2**31)
    assert label_codes(words).popcount.tolist() == [4, 0, 1]
    assert label_codes(torch.tensor([3, -1])).popcount.tolist() == [1, 0]


def test_clear_errors():
    p = make_problem("identity", 8, 16, seed=1)
    with pytest.raises(ValueError, match="need `labels`"):
        contrastive_loss(p.image, p.text, p.scale, positives="labels")
    with pytest.raises(ValueError, match="offset 5 puts the 8 local rows outside the 8 keys"):
        contrastive_loss(p.image, p.text, p.scale, offset=5)
    with pytest.raises(ValueError, match="same dimension"):
        contrastive_loss(p.image, p.text[:, :8], p.scale)
    with pytest.raises(ValueError, match="unknown contrastive backend"):
        contrastive_loss(p.image, p.text, p.scale, backend="cuda")
    with pytest.raises(ValueError, match="weighting must be one of"):
        contrastive_loss(p.image, p.text, p.scale, labels=torch.zeros(8, dtype=torch.long), weighting="dice")
    with pytest.raises(ValueError, match="needs merge_columns"):
        contrastive_loss(p.image, p.text, p.scale, text_keys=p.text)
    with pytest.raises(ValueError, match="image_keys needs text_keys"):
        contrastive_loss(p.image, p.text, p.scale, image_keys=p.image)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        contrastive_loss(p.image, p.text, p.scale, chunk_size=0)


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    p = make_problem("identity", 8, 16, seed=1)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        contrastive_loss(p.image, p.text, p.scale, backend="triton")


def test_default_backend_follows_device_and_size():
    from kernels.contrastive import EAGER_MAX_PAIRS, resolve_backend

    cuda = torch.device("cuda")  # resolution only looks at the device type; nothing runs on it
    assert resolve_backend(None, torch.device("cpu"), pairs=10**12) == "chunked"
    assert resolve_backend(None, cuda, pairs=256 * 2048) == "eager"
    assert resolve_backend(None, cuda, pairs=EAGER_MAX_PAIRS + 1) == "triton"
    assert resolve_backend("chunked", cuda, pairs=1) == "chunked"


def test_queue_updated_in_place_before_backward():
    """ViLReF enqueues the new batch into its queue between the loss and the backward: the loss keeps the
    queue as it was when the loss was computed."""
    p = make_problem("jaccard", 29, 24, seed=4, queue=7)
    queues = {k: p.kwargs[k].clone() for k in ("image_queue", "text_queue")}
    ours = contrastive_loss(p.image, p.text, p.scale, labels=p.labels, chunk_size=8, **p.kwargs)
    for name in queues:
        p.kwargs[name].mul_(-1.0)  # the caller's in-place update
    got = grads(ours, p.leaves())
    ref = reference_contrastive_loss(p.image, p.text, p.scale, labels=p.labels.long(),
                                     **(reference_kwargs(p) | queues))
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-5)
    for mine, theirs in zip(got, grads(ref, p.leaves())):
        torch.testing.assert_close(mine.double(), theirs.double(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["chunked", "triton"])
@pytest.mark.parametrize("name", ["cosine_exclude", "labels_jaccard_exclude"])
def test_queue_labels_rewritten_before_backward(name, backend):
    """ViLReF's queue keeps packed int32 labels, which reach the kernels as the buffer itself; once the queue
    is full, its enqueue overwrites them between the loss and the backward. The backward must use the labels
    the loss saw: with the new ones, weights left [0, 1], log w turned NaN and the weights NaN (the ViLReF
    ablation run died this way after its queue wrapped)."""
    if backend == "triton" and not triton_usable(torch.device("cpu")):
        pytest.skip("the triton backend runs here only under TRITON_INTERPRET=1")
    p = make_problem(name, 29, 24, seed=6, queue=13)
    dense = p.kwargs["queue_labels"]
    packed = p.kwargs["queue_labels"] = pack_multi_hot(dense)  # as FeatureQueue stores them
    ours = contrastive_loss(p.image, p.text, p.scale, labels=p.labels, chunk_size=8, backend=backend, **p.kwargs)
    packed.copy_(torch.roll(packed, 5, dims=0) ^ 1)  # the caller's in-place enqueue: other sets, other sizes
    got = grads(ours, p.leaves())
    ref = reference_contrastive_loss(p.image, p.text, p.scale, labels=p.labels.long(),
                                     **(reference_kwargs(p) | {"queue_labels": dense}))
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-5)
    for mine, theirs in zip(got, grads(ref, p.leaves())):
        assert torch.isfinite(mine).all()
        torch.testing.assert_close(mine.double(), theirs.double(), atol=2e-5, rtol=1e-4)
