"""`kernels.attention.attention_varlen` against a float64 reference built independently: the packed
sequences padded into a dense batch, the dense eager op with a key padding mask, then unpacked.

Without CUDA the Triton kernels run in the interpreter (tests/kernels/conftest.py). Sizes are small and odd:
zero-length and single-token sequences, a sequence over two 16-row tiles, Dh = 40 (a padded head-dim tile).
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels.attention import attention, attention_varlen, cu_seqlens_from_lengths

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TRITON = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON, reason="triton needs CUDA or TRITON_INTERPRET=1 set before import")
ATOL, RTOL = 2e-5, 1e-4
BACKENDS = [pytest.param("triton", marks=needs_triton), "sdpa", "eager"]

# (query lengths, key lengths (None: self-attention), Dh, causal)
CASES = {
    "self": ([5, 0, 1, 37, 17], None, 32, False),
    "self_causal": ([5, 0, 1, 37, 17], None, 32, True),
    "cross_dh40": ([9, 1, 0, 21, 3], [7, 3, 5, 0, 30], 40, False),
    "cross_causal_dh16": ([9, 1, 4, 21, 3], [7, 3, 0, 12, 30], 16, True),
}


def _packed(gen: torch.Generator, lengths: list[int], heads: int, head_dim: int) -> torch.Tensor:
    return torch.randn(sum(lengths), heads, head_dim, generator=gen, dtype=torch.float64).to(DEVICE)


def _reference(q, k, v, do, lengths_q, lengths_k, causal):
    """(out, dq, dk, dv) in float64: pad each sequence into a (n, H, L, Dh) batch, run the dense eager op with
    a key padding mask, unpack the real rows."""
    n, longest_q, longest_k = len(lengths_q), max(max(lengths_q), 1), max(max(lengths_k), 1)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def pad(t, lengths, longest):
        rows = torch.split(t, lengths)
        batch = t.new_zeros(n, longest, *t.shape[1:])
        for i, r in enumerate(rows):
            batch[i, : len(r)] = r
        return batch.transpose(1, 2)  # (n, H, L, Dh)

    mask = torch.arange(longest_k, device=DEVICE)[None, :] < torch.tensor(lengths_k, device=DEVICE)[:, None]
    out = attention(pad(leaves[0], lengths_q, longest_q), pad(leaves[1], lengths_k, longest_k),
                    pad(leaves[2], lengths_k, longest_k), causal=causal, key_padding_mask=mask, backend="eager")
    out = torch.cat([out[i, :, :length].transpose(0, 1) for i, length in enumerate(lengths_q)])
    return (out, *torch.autograd.grad(out, leaves, do))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_matches_float64_padded_reference(backend, case):
    lengths_q, lengths_k, head_dim, causal = CASES[case]
    lengths_k = lengths_k or lengths_q
    gen = torch.Generator().manual_seed(list(CASES).index(case))
    q, k, v = (_packed(gen, lengths, 3, head_dim) for lengths in (lengths_q, lengths_k, lengths_k))
    do = _packed(gen, lengths_q, 3, head_dim)
    expected = _reference(q, k, v, do, lengths_q, lengths_k, causal)

    cu_q, cu_k = (cu_seqlens_from_lengths(torch.tensor(x)).to(DEVICE) for x in (lengths_q, lengths_k))
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    out = attention_varlen(*leaves, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal, backend=backend)
    assert out.shape == q.shape and out.dtype == torch.float32
    got = (out, *torch.autograd.grad(out, leaves, do.float()))
    for name, g, want in zip(("out", "dq", "dk", "dv"), got, expected):
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        torch.testing.assert_close(g.double(), want, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")
    # queries whose key sequence is empty: exactly zero output and dq; keys nobody queries: zero dk, dv
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for i, (lq, lk) in enumerate(zip(lengths_q, lengths_k)):
        if lk == 0:
            assert got[0][starts_q[i]:starts_q[i + 1]].eq(0).all() and got[1][starts_q[i]:starts_q[i + 1]].eq(0).all()
        if lq == 0:
            assert got[2][starts_k[i]:starts_k[i + 1]].eq(0).all() and got[3][starts_k[i]:starts_k[i + 1]].eq(0).all()


@needs_triton
def test_triton_varlen_max_seqlen_above_the_longest_and_strided_inputs():
    """A generous max_seqlen (more grid blocks than any sequence needs) and q, k, v sliced from one packed qkv
    buffer (row stride 3 * H * Dh), as a fused projection gives them."""
    gen = torch.Generator().manual_seed(7)
    lengths = [3, 18, 1]
    qkv = _packed(gen, lengths, 6, 24).view(sum(lengths), 3, 2, 24)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    do = _packed(gen, lengths, 2, 24)
    expected = _reference(q, k, v, do, lengths, lengths, True)
    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).to(DEVICE)
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    out = attention_varlen(*leaves, cu, cu, 70, 70, causal=True, backend="triton")
    for g, want in zip((out, *torch.autograd.grad(out, leaves, do.float())), expected):
        torch.testing.assert_close(g.double(), want, atol=ATOL, rtol=RTOL)


def test_xformers_has_no_varlen_form():
    q = torch.zeros(3, 1, 8, device=DEVICE)
    cu = torch.tensor([0, 3], dtype=torch.int32, device=DEVICE)
    with pytest.raises((RuntimeError, ValueError), match="xformers"):
        attention_varlen(q, q, q, cu, cu, 3, 3, backend="xformers")


@pytest.mark.parametrize("offsets, max_seqlen, match", [
    ([0, 2, 5], 3, "rise from 0 to 6"),
    ([1, 2, 6], 4, "rise from 0"),
    ([0, 4, 2, 6], 4, "rise"),
    ([0, 2, 6], 3, "max_seqlen 3 is below"),
])
def test_bad_offsets_are_errors(offsets, max_seqlen, match):
    q = torch.zeros(6, 1, 8, device=DEVICE)
    cu = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        attention_varlen(q, q, q, cu, cu, max_seqlen, max_seqlen, backend="eager")


def test_offsets_must_be_int32():
    q = torch.zeros(6, 1, 8, device=DEVICE)
    with pytest.raises(ValueError, match="int32"):
        attention_varlen(q, q, q, torch.tensor([0, 6], device=DEVICE), torch.tensor([0, 6], device=DEVICE), 6, 6)
