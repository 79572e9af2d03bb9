"""The Triton contrastive kernels against the float64 dense reference, open_clip and the chunked path.

Without CUDA they run in the Triton interpreter (tests/kernels/conftest.py sets TRITON_INTERPRET=1),
so the sizes stay small and odd: every tile has masked rows, keys and embedding columns.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from kernels.contrastive import LossOptions, contrastive_loss, pack_multi_hot, reference_contrastive_loss

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the triton backend needs CUDA or TRITON_INTERPRET=1 set before import", allow_module_level=True)

from kernels.contrastive.chunked import chunked_stripe  # noqa: E402
from kernels.contrastive.spec import label_codes, pair_rules  # noqa: E402
from kernels.contrastive.triton_stripe import stripe_backward, stripe_forward, triton_stripe  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
ATOL, RTOL = 1e-5, 1e-4


def _emb(gen: torch.Generator, n: int, dim: int, dtype=torch.float32) -> torch.Tensor:
    x = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    return x.to(device=DEVICE, dtype=dtype).requires_grad_()


def _scale(value: float = 14.3) -> torch.Tensor:
    return torch.tensor(value, device=DEVICE, requires_grad=True)


def _multi_hot(gen: torch.Generator, n: int, classes: int = 40) -> torch.Tensor:
    """Sparse sets over two int32 words; bit 31 is busy (negative words); a few rows are empty."""
    hot = torch.rand(n, classes, generator=gen) < 0.08
    hot[:, 31] = torch.rand(n, generator=gen) < 0.5
    hot[: max(1, n // 6)] = hot[n // 2]  # duplicated sets: genuine label positives / false negatives
    hot[-2:] = False
    return hot.to(DEVICE)


def _class_ids(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(-1, 5, (n,), generator=gen).to(DEVICE)  # -1: unlabelled


def _opts(kwargs: dict) -> LossOptions:
    return LossOptions(kwargs.get("positives", "identity"), kwargs.get("exclude_false_negatives", False),
                       kwargs.get("weighting"), kwargs.get("alpha", 0.5))


def _check(inputs: dict, leaves: list[torch.Tensor], atol: float = ATOL, rtol: float = RTOL, **kwargs):
    """Triton loss and gradients w.r.t. `leaves` == the float64 reference's."""
    loss = contrastive_loss(**inputs, **kwargs, backend="triton")
    grads = torch.autograd.grad(loss, leaves)
    ref_kwargs = {k: v for k, v in inputs.items() if k not in ("image_emb", "text_emb", "logit_scale")}
    ref = reference_contrastive_loss(inputs["image_emb"], inputs["text_emb"], inputs["logit_scale"],
                                     opts=_opts(kwargs), **ref_kwargs)
    ref_grads = torch.autograd.grad(ref, leaves)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref, atol=atol, rtol=rtol)
    for grad, ref_grad, leaf in zip(grads, ref_grads, leaves):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype
        torch.testing.assert_close(grad.double(), ref_grad.double(), atol=atol, rtol=rtol)
    return loss


LABEL_CASES = {
    "identity": ("none", {}),
    "class_ids": ("class", {"positives": "labels"}),
    "class_exclude": ("class", {"exclude_false_negatives": True}),
    "class_weight_alpha1": ("class", {"weighting": "jaccard", "alpha": 1.0}),
    "multi_hot_positives": ("bits", {"positives": "labels"}),
    "multi_hot_exclude": ("bits", {"exclude_false_negatives": True}),
    "jaccard": ("bits", {"weighting": "jaccard"}),
    "cosine": ("bits", {"weighting": "cosine", "alpha": 0.7}),
    "jaccard_exclude": ("bits", {"weighting": "jaccard", "exclude_false_negatives": True}),
    "cosine_exclude_positives": ("bits", {"weighting": "cosine", "exclude_false_negatives": True,
                                          "positives": "labels"}),
}


def _labels(gen: torch.Generator, kind: str, n: int) -> torch.Tensor | None:
    return {"none": None, "class": _class_ids, "bits": _multi_hot}[kind](gen, n) if kind != "none" else None


@pytest.mark.parametrize("dim", [40, 70, 24])  # 70: several D chunks, the last one partial
@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_square_batch_matches_reference(case, dim):
    gen = torch.Generator().manual_seed(list(LABEL_CASES).index(case) * 100 + dim)  # str hash() is salted
    kind, kwargs = LABEL_CASES[case]
    image, text, scale = _emb(gen, 37, dim), _emb(gen, 37, dim), _scale()
    _check(dict(image_emb=image, text_emb=text, logit_scale=scale, labels=_labels(gen, kind, 37)),
           [image, text, scale], **kwargs)


@pytest.mark.parametrize("case", ["identity", "class_ids", "jaccard_exclude", "cosine_exclude_positives"])
def test_rectangular_with_offset(case):
    """37 local rows against 53 gathered keys; the keys around the local block are leaves of their own."""
    gen = torch.Generator().manual_seed(7)
    kind, kwargs = LABEL_CASES[case]
    m, before, after, dim = 37, 9, 7, 40
    image, text, scale = _emb(gen, m, dim), _emb(gen, m, dim), _scale()
    others = [_emb(gen, before, dim), _emb(gen, after, dim), _emb(gen, before, dim), _emb(gen, after, dim)]
    image_keys = torch.cat([others[0], image, others[1]])  # autograd reaches `image` as query and as key
    text_keys = torch.cat([others[2], text, others[3]])
    key_labels = _labels(gen, kind, before + m + after)
    labels = None if key_labels is None else key_labels[before:before + m]
    _check(dict(image_emb=image, text_emb=text, logit_scale=scale, labels=labels, image_keys=image_keys,
                text_keys=text_keys, key_labels=key_labels, offset=before),
           [image, text, scale, *others], **kwargs)


@pytest.mark.parametrize("dim", [40, 24])
@pytest.mark.parametrize("case", ["identity", "class_ids", "multi_hot_positives", "jaccard_exclude"])
def test_queue_matches_reference_and_gets_no_gradient(case, dim):
    gen = torch.Generator().manual_seed(11 + dim)
    kind, kwargs = LABEL_CASES[case]
    image, text, scale = _emb(gen, 29, dim), _emb(gen, 29, dim), _scale()
    image_queue, text_queue = _emb(gen, 11, dim), _emb(gen, 11, dim)
    labels, queue_labels = _labels(gen, kind, 29), _labels(gen, kind, 11)
    if queue_labels is not None:
        queue_labels[:3] = labels[:3]  # queue entries sharing a batch label set
    inputs = dict(image_emb=image, text_emb=text, logit_scale=scale, labels=labels, image_queue=image_queue,
                  text_queue=text_queue, queue_labels=queue_labels)
    _check(inputs, [image, text, scale], **kwargs)
    contrastive_loss(**inputs, **kwargs, backend="triton").backward()
    assert image_queue.grad is None and text_queue.grad is None
    assert image.grad is not None and scale.grad is not None


def test_identity_equals_open_clip():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    gen = torch.Generator().manual_seed(3)
    image, text, scale = _emb(gen, 45, 40), _emb(gen, 45, 40), _scale(20.0)
    loss = contrastive_loss(image, text, scale, backend="triton")
    grads = torch.autograd.grad(loss, [image, text, scale])
    ref = open_clip_loss.ClipLoss()(image, text, scale)
    ref_grads = torch.autograd.grad(ref, [image, text, scale])
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=RTOL)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=ATOL, rtol=RTOL)


def _stripe_problem(seed: int = 5, m: int = 37, n: int = 45, dim: int = 40, offset: int | None = 4):
    """Rows against keys with labels (two bit words, jaccard, exclusion, label positives)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = _emb(gen, m, dim), _emb(gen, n, dim)
    hot = _multi_hot(gen, n + m)  # rows share the keys' labels at the offset, else draw their own (queues)
    start = n if offset is None else offset
    rows = label_codes(pack_multi_hot(hot[start:start + m]))
    keys = label_codes(pack_multi_hot(hot[:n]))
    opts = LossOptions("labels", exclude_false_negatives=True, weighting="jaccard", alpha=0.6)
    return q, k, _scale(), rows, keys, offset, opts


def _dense_lse(q, k, scale, rows, keys, offset, opts):
    """float64 row and column log-sum-exps of the weighted similarities, from the pair rules."""
    i = torch.arange(q.shape[0], device=DEVICE)[:, None]
    j = torch.arange(k.shape[0], device=DEVICE)[None, :]
    _, weight = pair_rules(i, j, k.shape[0] if offset is None else offset, rows, keys, opts)
    s = (scale * (q @ k.T)).detach().double() + weight.double().log()
    return torch.logsumexp(s, dim=1), torch.logsumexp(s, dim=0)


@pytest.mark.parametrize("m, n, dim, offset", [(37, 45, 40, 4), (37, 29, 70, None), (32, 48, 32, 16)])
def test_launchers_write_every_output_element(m, n, dim, offset):
    """NaN-poisoned outputs and dS buffer: every element written; values equal the float64 dense ones.
    Sizes: masked tiles with D = 40 and 70 (several D chunks, the last partial) and full tiles (no masks)."""
    q, k, scale, rows, keys, offset, opts = _stripe_problem(m=m, n=n, dim=dim, offset=offset)
    q, k = q.detach(), k.detach()
    nan = dict(dtype=torch.float32, device=DEVICE)
    row_lse, parts = torch.full((m,), math.nan, **nan), torch.full((math.ceil(m / 16), n), math.nan, **nan)
    out_row, col_lse = stripe_forward(q, k, scale, rows, keys, offset, opts, True, row_lse=row_lse, parts=parts)
    assert out_row is row_lse and not (row_lse.isnan().any() or parts.isnan().any())
    ref_row, ref_col = _dense_lse(q, k, scale, rows, keys, offset, opts)
    torch.testing.assert_close(row_lse.double(), ref_row, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(col_lse.double(), ref_col, atol=ATOL, rtol=RTOL)

    # backward of a_i row_lse_i + b_j col_lse_j, three dS chunks of 16 rows
    gen = torch.Generator().manual_seed(m + n)
    a, b = torch.rand(m, generator=gen).to(DEVICE), torch.rand(n, generator=gen).to(DEVICE)
    ds = torch.full((16, n), math.nan, **nan)
    dq, dk, dscale = stripe_backward(q, k, scale, row_lse, col_lse, a, b, rows, keys, offset, opts, ds=ds)
    assert not (dq.isnan().any() or dk.isnan().any() or dscale.isnan())
    leaves = [q.double().requires_grad_(), k.double().requires_grad_(), scale.detach().double().requires_grad_()]
    i = torch.arange(m, device=DEVICE)[:, None]
    j = torch.arange(n, device=DEVICE)[None, :]
    _, weight = pair_rules(i, j, n if offset is None else offset, rows, keys, opts)
    s = leaves[2] * (leaves[0] @ leaves[1].T) + weight.double().log()
    objective = (a.double() * torch.logsumexp(s, 1)).sum() + (b.double() * torch.logsumexp(s, 0)).sum()
    for mine, ref in zip((dq, dk, dscale), torch.autograd.grad(objective, leaves)):
        torch.testing.assert_close(mine.double(), ref, atol=ATOL, rtol=RTOL)


def test_stripe_matches_chunked_and_respects_needs_input_grad():
    q, k, scale, rows, keys, offset, opts = _stripe_problem(seed=6)
    gen = torch.Generator().manual_seed(60)
    a, b = torch.rand(q.shape[0], generator=gen).to(DEVICE), torch.rand(k.shape[0], generator=gen).to(DEVICE)

    def objective(stripe, q, k, scale):
        row_lse, col_lse = stripe(q, k, scale, rows, keys, offset, opts, True)
        return (a * row_lse).sum() + (b * col_lse).sum()

    ours, ref = objective(triton_stripe, q, k, scale), objective(chunked_stripe, q, k, scale)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
    for grad, ref_grad in zip(torch.autograd.grad(ours, [q, k, scale]), torch.autograd.grad(ref, [q, k, scale])):
        torch.testing.assert_close(grad, ref_grad, atol=ATOL, rtol=RTOL)
    # only the keys need a gradient: no dq GEMM, the answer is unchanged
    (dk,) = torch.autograd.grad(objective(triton_stripe, q.detach(), k, scale.detach()), [k])
    (ref_dk,) = torch.autograd.grad(objective(chunked_stripe, q.detach(), k, scale.detach()), [k])
    torch.testing.assert_close(dk, ref_dk, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", ["class", "bits"])
def test_every_negative_excluded_is_zero_not_nan(kind):
    """One shared label set: each row keeps only its true pair, so L_i = 0 and nothing is NaN."""
    gen = torch.Generator().manual_seed(13)
    b, dim = 21, 24
    image, text, scale = _emb(gen, b, dim), _emb(gen, b, dim), _scale(50.0)
    labels = torch.full((b,), 3, device=DEVICE) if kind == "class" else _multi_hot(gen, b)[b // 2].expand(b, -1)
    loss = contrastive_loss(image, text, scale, labels=labels, exclude_false_negatives=True, backend="triton")
    grads = torch.autograd.grad(loss, [image, text, scale])
    assert loss.abs().item() <= 1e-6
    for grad in grads:
        assert torch.isfinite(grad).all() and grad.abs().max().item() <= 1e-6
    codes = label_codes(labels if kind == "class" else pack_multi_hot(labels))
    row_lse, col_lse = stripe_forward(image.detach(), text.detach(), scale, codes, codes, 0,
                                      LossOptions(exclude_false_negatives=True), True)
    true_pairs = scale.detach() * (image * text).sum(1).detach()  # the only pair each row and column keeps
    torch.testing.assert_close(row_lse, true_pairs, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(col_lse, true_pairs, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case", ["identity", "jaccard_exclude"])
def test_large_logit_scale_is_finite(case):
    gen = torch.Generator().manual_seed(17)
    kind, kwargs = LABEL_CASES[case]
    image, text, scale = _emb(gen, 33, 40), _emb(gen, 33, 40), _scale(100.0)
    with torch.no_grad():  # near-duplicates: logits near the 100 ceiling on many pairs
        text[5:15] = F.normalize(image[5:15] + 0.05 * text[5:15], dim=1)
    loss = _check(dict(image_emb=image, text_emb=text, logit_scale=scale, labels=_labels(gen, kind, 33)),
                  [image, text, scale], atol=1e-4, rtol=1e-4, **kwargs)
    assert loss.item() > 1.0  # the hard negatives make it far from zero


def test_bf16_inputs_close_to_reference():
    """bf16 tiles with fp32 accumulation. The interpreter's 16-bit tl.dot is broken (triton 3.8), so there
    the kernels upcast the bf16 operands before the dot: loads, stores and rounding are still exercised."""
    gen = torch.Generator().manual_seed(19)
    image, text = _emb(gen, 37, 40, torch.bfloat16), _emb(gen, 37, 40, torch.bfloat16)
    scale = _scale()
    labels = _multi_hot(gen, 37)
    kwargs = dict(labels=labels, weighting="cosine", exclude_false_negatives=True)
    loss = contrastive_loss(image, text, scale, **kwargs, backend="triton")
    grads = torch.autograd.grad(loss, [image, text, scale])
    ref = reference_contrastive_loss(image, text, scale, labels=labels, opts=_opts(kwargs))
    ref_grads = torch.autograd.grad(ref, [image, text, scale])
    # like the chunked path: the loss itself is an fp32 reduction, the gradients follow each input
    assert loss.dtype == torch.float32 and grads[0].dtype == torch.bfloat16 and grads[2].dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, atol=2e-2, rtol=1e-2)
    for grad, ref_grad in zip(grads, ref_grads):
        rel = (grad.double() - ref_grad.double()).norm() / ref_grad.double().norm()
        assert rel.item() < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dim, kind", [(512, "multi_hot"), (768, "identity")])
def test_bf16_large_batch_matches_chunked_on_gpu(dim, kind):
    """B = 32768 in bf16 against the chunked path in fp32 on the same (bf16-rounded) inputs."""
    gen = torch.Generator().manual_seed(23 + dim)
    b = 32768
    image, text = _emb(gen, b, dim, torch.bfloat16), _emb(gen, b, dim, torch.bfloat16)
    scale = _scale(100.0)
    kwargs = {}
    if kind == "multi_hot":
        kwargs = dict(labels=_multi_hot(gen, b), positives="labels", weighting="jaccard", exclude_false_negatives=True)
    loss = contrastive_loss(image, text, scale, **kwargs, backend="triton")
    grads = torch.autograd.grad(loss, [image, text, scale])
    ref = contrastive_loss(image.float(), text.float(), scale, **kwargs, backend="chunked")
    ref_grads = torch.autograd.grad(ref, [image, text, scale])
    torch.testing.assert_close(loss.float(), ref, atol=2e-2, rtol=1e-2)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.isfinite(grad).all()
        assert ((grad.float() - ref_grad).norm() / ref_grad.norm()).item() < 2e-2


@pytest.mark.gpu
def test_fp32_large_batch_matches_reference_on_gpu():
    gen = torch.Generator().manual_seed(29)
    image, text, scale = _emb(gen, 1000, 768), _emb(gen, 1000, 768), _scale(100.0)
    _check(dict(image_emb=image, text_emb=text, logit_scale=scale, labels=_class_ids(gen, 1000)),
           [image, text, scale], atol=1e-4, rtol=1e-4, positives="labels", exclude_false_negatives=True)


def test_zero_weight_pair_cannot_set_the_running_max():
    """alpha = 1 zeroes a same-label negative 200 logits above every kept pair: it must be dropped, not
    allowed to set the running max (the kept terms would underflow to log 0 = -inf)."""
    gen = torch.Generator().manual_seed(31)
    b, dim = 17, 24
    u = F.normalize(torch.randn(1, dim, generator=gen, dtype=torch.float64), dim=1)
    image = (u + 1e-3 * torch.randn(b, dim, generator=gen, dtype=torch.float64)).expand(b, dim).clone()
    text = -image.clone()
    text[1] = image[0]  # sample 1's text is sample 0's image: s = +100 for that pair only
    image, text = (F.normalize(x, dim=1).float().to(DEVICE).requires_grad_() for x in (image, text))
    labels = torch.full((b,), -1, device=DEVICE)
    labels[:2] = 4
    loss = _check(dict(image_emb=image, text_emb=text, logit_scale=_scale(100.0), labels=labels),
                  [image, text], atol=1e-4, rtol=1e-4, weighting="jaccard", alpha=1.0)
    assert math.isfinite(loss.item())
