"""`kernels.attention`: every backend against the float64 eager reference, the Triton launchers' edge
cases, and backend resolution.

Without CUDA the Triton kernels run in the interpreter (tests/kernels/conftest.py sets
TRITON_INTERPRET=1), so sizes stay small and odd: every 16 x 16 tile has out-of-range queries and
keys, and Dh = 40 exercises the padded head-dim tile.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kernels.attention import BACKENDS, attention, available_backends, resolve_backend
from kernels.attention import registry

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TRITON = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON, reason="triton needs CUDA or TRITON_INTERPRET=1 set before import")
ATOL, RTOL = 2e-5, 1e-4


def _qkv(gen: torch.Generator, seq_q: int, seq_k: int, head_dim: int, batch: int = 2, heads: int = 3):
    """float64 leaves on DEVICE, drawn on the CPU so every device sees the same numbers."""
    shapes = [(batch, heads, seq_q, head_dim)] + [(batch, heads, seq_k, head_dim)] * 2
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE) for s in shapes]


def _padding(gen: torch.Generator, batch: int, seq_k: int, causal: bool) -> torch.Tensor:
    """Right padding to a random length; the last row fully padded; with causal, the first row also
    loses its first 3 keys (left padding), which empties its first 3 query rows."""
    lengths = torch.randint(seq_k // 2, seq_k, (batch,), generator=gen)
    lengths[-1] = 0
    mask = torch.arange(seq_k)[None, :] < lengths[:, None]
    if causal:
        mask[0, :3] = False
    return mask.to(DEVICE)


def _empty_rows(mask: torch.Tensor | None, causal: bool, seq_q: int) -> torch.Tensor | None:
    """(B, Lq) bool: query rows with no allowed key."""
    if mask is None:
        return None
    allowed = mask[:, None, :].expand(-1, seq_q, -1)
    if causal:
        allowed = allowed & torch.ones(seq_q, mask.shape[1], dtype=torch.bool, device=mask.device).tril()
    return ~allowed.any(-1)


def _run(backend: str, leaves, grad_out, dtype=torch.float32, **kwargs):
    """(out, dq, dk, dv) of `backend` on copies of the float64 leaves cast to `dtype`."""
    inputs = [x.detach().to(dtype).requires_grad_() for x in leaves]
    out = attention(*inputs, backend=backend, **kwargs)
    assert out.shape == inputs[0].shape and out.dtype == dtype
    grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    return (out, *grads)


def _reference(leaves, grad_out, **kwargs):
    return _run("eager", leaves, grad_out, dtype=torch.float64, **kwargs)


def _assert_matches(results, expected, empty, mask, atol=ATOL, rtol=RTOL):
    for name, got, ref in zip(("out", "dq", "dk", "dv"), results, expected):
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        torch.testing.assert_close(got.double(), ref, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    if empty is not None:  # empty query rows: exactly zero output and dq; padded keys: zero dk, dv
        out, dq, dk, dv = results
        rows = empty[:, None, :, None].expand_as(out)
        assert out[rows].eq(0).all() and dq[rows].eq(0).all()
        keys = ~mask[:, None, :, None].expand_as(dk)
        assert dk[keys].eq(0).all() and dv[keys].eq(0).all()


# (Lq, Lk, Dh, causal): cross-attention, causal self-attention, the other native Dh, a padded Dh, and
# causal cross-attention both ways (top-left aligned)
CASES = {
    "cross": (37, 53, 32, False),
    "self_causal": (45, 45, 32, True),
    "dh16": (29, 29, 16, False),
    "dh64_causal": (29, 29, 64, True),
    "dh40_padded": (21, 35, 40, False),
    "causal_lq_gt_lk": (35, 21, 32, True),
    "causal_lq_lt_lk": (21, 35, 32, True),
}
BACKEND_PARAMS = [pytest.param("triton", marks=needs_triton), "sdpa", "eager"]


@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backend_matches_float64_reference(backend, case, padded):
    seq_q, seq_k, head_dim, causal = CASES[case]
    gen = torch.Generator().manual_seed(2 * list(CASES).index(case) + padded)
    leaves = _qkv(gen, seq_q, seq_k, head_dim)
    grad_out = torch.randn(leaves[0].shape, generator=gen, dtype=torch.float64).to(DEVICE)
    mask = _padding(gen, 2, seq_k, causal) if padded else None
    kwargs = dict(causal=causal, key_padding_mask=mask)
    expected = _reference(leaves, grad_out, **kwargs)
    _assert_matches(_run(backend, leaves, grad_out, **kwargs), expected, _empty_rows(mask, causal, seq_q), mask)


def test_reference_zeroes_empty_rows_without_nan():
    gen = torch.Generator().manual_seed(0)
    leaves = [x.requires_grad_() for x in _qkv(gen, 9, 11, 16)]
    mask = torch.zeros(2, 11, dtype=torch.bool, device=DEVICE)
    mask[0, 4:] = True
    out = attention(*leaves, key_padding_mask=mask, causal=True, backend="eager")
    out.sum().backward()
    assert out[1].eq(0).all() and out[0, :, :4].eq(0).all() and out[0, :, 4:].ne(0).all()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    assert leaves[0].grad[1].eq(0).all() and leaves[1].grad[1].eq(0).all()


def test_integer_mask_and_custom_scale():
    gen = torch.Generator().manual_seed(1)
    leaves = _qkv(gen, 13, 17, 16)
    mask = _padding(gen, 2, 17, False)
    ref = attention(*leaves, key_padding_mask=mask, scale=0.3, backend="eager")
    got = attention(*[x.float() for x in leaves], key_padding_mask=mask.long(), scale=0.3, backend="sdpa")
    torch.testing.assert_close(got.double(), ref, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------- triton


@needs_triton
def test_triton_non_contiguous_inputs():
    """q, k, v as (B, L, H, Dh) buffers viewed as (B, H, L, Dh), and a transposed upstream gradient."""
    from kernels.attention.triton_ops import attention_backward, attention_forward

    gen = torch.Generator().manual_seed(2)
    q64, k64, v64 = _qkv(gen, 19, 23, 32, heads=2)
    q, k, v = (x.float().transpose(1, 2).contiguous().transpose(1, 2) for x in (q64, k64, v64))
    assert not q.is_contiguous()
    mask = _padding(gen, 2, 23, False)
    out, lse = attention_forward(q, k, v, mask)
    do = torch.randn(q.transpose(1, 2).shape, generator=gen).to(DEVICE).transpose(1, 2)
    grads = attention_backward(do, q, k, v, out, lse, mask)
    leaves = [x.requires_grad_() for x in (q64, k64, v64)]
    ref = attention(*leaves, key_padding_mask=mask, backend="eager")
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=RTOL)


@needs_triton
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_triton_launchers_write_every_element(causal):
    """NaN-poisoned outputs (out, lse, delta, dq, dk, dv) come back fully written. Lq < Lk with causal
    leaves key blocks no query sees; the padding leaves empty rows and padded keys."""
    from kernels.attention.triton_ops import attention_backward, attention_forward

    gen = torch.Generator().manual_seed(3)
    q, k, v = (x.float() for x in _qkv(gen, 21, 50, 24))
    mask = _padding(gen, 2, 50, causal)
    nan = lambda t: torch.full_like(t, float("nan"))  # noqa: E731
    lse = torch.full(q.shape[:3], float("nan"), device=DEVICE)
    out, lse = attention_forward(q, k, v, mask, causal, out=nan(q), lse=lse)
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    empty = _empty_rows(mask, causal, 21)[:, None, :].expand_as(lse)
    assert torch.isneginf(lse[empty]).all() and torch.isfinite(lse[~empty]).all()
    do = torch.randn(q.shape, generator=gen).to(DEVICE)
    dq, dk, dv = attention_backward(do, q, k, v, out, lse, mask, causal, dq=nan(q), dk=nan(k), dv=nan(v),
                                    delta=nan(lse))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref = attention(*leaves, key_padding_mask=mask, causal=causal, backend="eager")
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    for got, want in zip((out, dq, dk, dv), (ref, *ref_grads)):
        torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=RTOL)


@needs_triton
@pytest.mark.parametrize("block_m, block_n", [(32, 16), (16, 32)], ids=["tall", "wide"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_triton_unequal_blocks_split_masked_and_full_tiles(block_m, block_n, causal):
    """Query and key blocks of different sizes move where the full tiles end and the diagonal ones begin
    (forward, dq: key tiles; dk/dv: query tiles); Lq > Lk and padding leave boundary tiles on both sides."""
    from kernels.attention.triton_ops import attention_backward, attention_forward

    gen = torch.Generator().manual_seed(8)
    q, k, v = (x.float() for x in _qkv(gen, 77, 61, 16))
    mask = _padding(gen, 2, 61, causal)
    blocks = dict(block_m=block_m, block_n=block_n)
    out, lse = attention_forward(q, k, v, mask, causal, **blocks)
    do = torch.randn(q.shape, generator=gen).to(DEVICE)
    grads = attention_backward(do, q, k, v, out, lse, mask, causal, **blocks)
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref = attention(*leaves, key_padding_mask=mask, causal=causal, backend="eager")
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=RTOL)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_16bit_matches_reference(dtype):
    """16-bit inputs (the interpreter upcasts the rounded dot operands; a GPU runs native MMA)."""
    gen = torch.Generator().manual_seed(4)
    leaves = _qkv(gen, 37, 37, 32)
    grad_out = torch.randn(leaves[0].shape, generator=gen, dtype=torch.float64).to(DEVICE)
    mask = _padding(gen, 2, 37, True)
    kwargs = dict(causal=True, key_padding_mask=mask)
    # the reference sees the same rounded inputs, so the tolerance covers only the kernel's roundings
    rounded = [x.to(dtype).double() for x in leaves]
    expected = _reference(rounded, grad_out.to(dtype).double(), **kwargs)
    results = _run("triton", rounded, grad_out, dtype=dtype, **kwargs)
    _assert_matches(results, expected, _empty_rows(mask, True, 37), mask, atol=3e-2, rtol=3e-2)


@needs_triton
def test_triton_rejects_head_dim_over_256():
    q = torch.zeros(1, 1, 4, 264, device=DEVICE)
    with pytest.raises(ValueError, match="Dh <= 256"):
        attention(q, q, q, backend="triton")


# ------------------------------------------------------------------------------------------ backends


def test_unknown_backend_raises_value_error():
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, q, q, backend="flash9")


def test_xformers_on_cpu_raises_runtime_error():
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="xformers.*needs CUDA"):
        attention(q, q, q, backend="xformers")
    assert "xformers" not in available_backends("cpu")


def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))
    assert "triton" not in available_backends("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"


def test_triton_import_failure_is_reported(monkeypatch):
    monkeypatch.setattr(registry, "_import_error", lambda module: f"{module} is not importable (test)")
    with pytest.raises(RuntimeError, match="triton is not importable"):
        resolve_backend("triton", "cpu")
    assert resolve_backend(None, "cuda") == "sdpa"


def test_default_backend():
    assert resolve_backend(None, "cpu") == "sdpa"
    assert available_backends("cpu")[-2:] == ["sdpa", "eager"] and set(available_backends("cpu")) <= set(BACKENDS)
    assert resolve_backend(None, "cuda") == "sdpa"  # measured faster than our Triton kernel on an H100


@pytest.mark.parametrize("problem, row", [
    (registry.Problem(197, 197, 64), "cuda-default"),
    (registry.Problem(1025, 1025, 64), "cuda-long"),
    (registry.Problem(256, 256, 64, padded=True), "cuda-padded"),
    (registry.Problem(64, 64, 64, causal=True, padded=True), "cuda-causal"),
    (registry.Problem(64, 197, 64), "cuda-cross"),
    (registry.Problem(77, 77, 64, padded=True, varlen=True), "cuda-varlen"),
])
def test_dispatch_table_rows_by_shape(problem, row):
    found = registry.dispatch_row("cuda", problem)
    assert found.name == row and found.backend in BACKENDS
    assert registry.dispatch_row("cpu", problem).name == "other-default"


def test_every_dispatch_row_cites_a_results_file_that_exists():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for row in registry.DISPATCH:
        assert (repo / row.evidence).is_file(), row
    for device in ("cuda", "other"):  # each device ends with a row that matches everything
        assert [r for r in registry.DISPATCH if r.device == device][-1].applies(registry.Problem(1, 2, 3, True, True))


def test_dispatch_choice_that_cannot_run_is_an_error(monkeypatch):
    """A row pointing at a backend unavailable here raises; it does not quietly take another backend."""
    rows = tuple(registry.Measured(r.name, r.device, r.applies, "xformers" if r.device == "other" else r.backend,
                                   r.evidence, r.note) for r in registry.DISPATCH)
    monkeypatch.setattr(registry, "DISPATCH", rows)
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="dispatch table picks 'xformers'.*other-default"):
        attention(q, q, q)
    assert attention(q, q, q, backend="sdpa").shape == q.shape


@pytest.mark.parametrize("shapes", [
    ((2, 3, 5, 16), (2, 3, 7, 16), (2, 3, 7, 8)),
    ((2, 3, 5, 16), (1, 3, 7, 16), (1, 3, 7, 16)),
    ((2, 5, 16), (2, 7, 16), (2, 7, 16)),
])
def test_shape_errors(shapes):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError):
        attention(q, k, v)


def test_mask_shape_error():
    q = torch.zeros(2, 1, 4, 16)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, q, q, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- GPU


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("seq, causal, padded", [(197, False, False), (1025, False, False), (256, True, True)],
                         ids=["vit197", "long1025", "causal256_pad"])
def test_bf16_matches_sdpa_on_gpu(seq, causal, padded):
    """bf16 at real shapes (autotuned kernels) against fp32 SDPA, by relative norm error."""
    gen = torch.Generator().manual_seed(5)
    shape = (2, 12, seq, 64)
    q, k, v = (torch.randn(shape, generator=gen).cuda() for _ in range(3))
    grad_out = torch.randn(shape, generator=gen).cuda()
    mask = None
    if padded:  # right padding keeps key 0, so no row is empty: plain SDPA is a valid reference
        mask = (torch.arange(seq)[None, :] < torch.tensor([[seq], [seq // 3]])).cuda()
    got = _run("triton", (q, k, v), grad_out, dtype=torch.bfloat16, causal=causal, key_padding_mask=mask)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    attn_mask = None
    if mask is not None:
        attn_mask = mask[:, None, None, :] & torch.ones(seq, seq, dtype=torch.bool, device="cuda").tril()
    ref = F.scaled_dot_product_attention(*leaves, attn_mask=attn_mask, is_causal=causal and mask is None)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, (ref, *ref_grads)):
        assert torch.isfinite(g).all() and _rel_err(g, r) < 2e-2, name


@pytest.mark.gpu
def test_fp32_matches_reference_on_gpu():
    gen = torch.Generator().manual_seed(6)
    leaves = _qkv(gen, 300, 211, 128, batch=2, heads=4)
    grad_out = torch.randn(leaves[0].shape, generator=gen, dtype=torch.float64).cuda()
    mask = _padding(gen, 2, 211, True)
    kwargs = dict(causal=True, key_padding_mask=mask)
    expected = _reference(leaves, grad_out, **kwargs)
    _assert_matches(_run("triton", leaves, grad_out, **kwargs), expected, _empty_rows(mask, True, 300), mask,
                    atol=1e-4, rtol=1e-3)
