"""Attention backends: names, availability on a device, and the resolver `attention()` calls.

An explicitly requested backend that cannot run raises RuntimeError with the reason; only
`backend=None` chooses, from `DISPATCH`: a table of measured regions (device, shape kind), each row
naming the backend that was fastest there and the results file that shows it. Today every row says
"sdpa": on an H100, torch's SDPA (FlashAttention) beat our Triton kernel at every measured shape
(benchmarks/results/gpu-h100-notes.md), so Triton is opt-in. A row changes only with a results file that
shows otherwise; varlen text is where the Triton varlen path is expected to win, and it is not measured
on a GPU yet. If the table's choice cannot run on the device, that is an error too: nothing falls back.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

BACKENDS = ("triton", "xformers", "sdpa", "eager")
# attention_varlen: the Triton kernel, or the dense torch op once per sequence (xformers' block-diagonal masks
# are not wired in: asking for it is an error, not a quiet switch)
VARLEN_BACKENDS = ("triton", "sdpa", "eager")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _import_error(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # xformers can fail with more than ImportError (missing CUDA libraries, ABI)
        return f"{module} is not importable ({type(exc).__name__}: {exc})"
    return None


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why `backend` cannot run on `device`, or None when it can."""
    device = torch.device(device)
    if backend == "triton":
        error = _import_error("triton")
        if error is None and device.type != "cuda" and not _interpreting():
            error = (f"the triton attention kernels need CUDA tensors, got {device.type} ones (for CPU testing set "
                     "TRITON_INTERPRET=1 before kernels.attention.triton_flash is imported)")
        return error
    if backend == "xformers":
        if device.type != "cuda":
            return f"xformers memory_efficient_attention needs CUDA tensors, got {device.type} ones"
        return _import_error("xformers.ops")
    return None


def available_backends(device: torch.device | str) -> list[str]:
    return [name for name in BACKENDS if unavailable_reason(name, device) is None]


@dataclass(frozen=True)
class Problem:
    """What the dispatch table looks at: one attention call's shape and mask kind."""

    seq_q: int
    seq_k: int
    head_dim: int
    causal: bool = False
    padded: bool = False  # a key padding mask is given
    varlen: bool = False  # attention_varlen (packed sequences)


@dataclass(frozen=True)
class Measured:
    """One row of the dispatch table: where it applies, the backend measured fastest there, and the evidence."""

    name: str
    device: str  # torch device type the row is for; "other" covers every non-CUDA device
    applies: Callable[[Problem], bool]
    backend: str
    evidence: str  # results file, relative to the repository root
    note: str


H100_ATTENTION = "benchmarks/results/attention-h100.json"
H100_NOTES = "benchmarks/results/gpu-h100-notes.md"
CPU_ATTENTION = "benchmarks/results/attention-cpu.json"

# First matching row of the device wins; each device's last row matches everything (its default).
DISPATCH = (
    Measured("cuda-varlen", "cuda", lambda p: p.varlen, "sdpa", H100_NOTES,
             "not measured on a GPU yet: the Triton varlen path (packed captions, no padding) is the candidate, "
             "sdpa (once per sequence) stays until a results file shows Triton faster"),
    Measured("cuda-cross", "cuda", lambda p: p.seq_q != p.seq_k, "sdpa", H100_ATTENTION,
             "decoder_cross_64x197, fwd+bwd: sdpa 0.18 ms, triton 1.06 ms"),
    Measured("cuda-causal", "cuda", lambda p: p.causal, "sdpa", H100_ATTENTION,
             "decoder_self_64 (causal, padded), fwd+bwd: sdpa 0.71 ms, triton 1.06 ms"),
    Measured("cuda-padded", "cuda", lambda p: p.padded, "sdpa", H100_ATTENTION,
             "text_256_padded, fwd+bwd: sdpa 0.63 ms, triton 0.76 ms"),
    Measured("cuda-long", "cuda", lambda p: p.seq_q >= 1024, "sdpa", H100_ATTENTION,
             "vit_b16_512 (1025 tokens), fwd+bwd: sdpa 1.36 ms, triton 1.88 ms"),
    Measured("cuda-default", "cuda", lambda p: True, "sdpa", H100_ATTENTION,
             "vit_b16_224 (197 tokens), fwd+bwd: sdpa 0.25 ms, triton 0.83 ms"),
    Measured("other-default", "other", lambda p: True, "sdpa", CPU_ATTENTION,
             "sdpa beat eager at every CPU shape; Triton runs on a CPU only in its interpreter (tests)"),
)


def dispatch_row(device: torch.device | str, problem: Problem | None = None) -> Measured:
    """The table row `backend=None` follows for `problem` on `device` (no problem: the device's default)."""
    kind = "cuda" if torch.device(device).type == "cuda" else "other"
    rows = [row for row in DISPATCH if row.device == kind]
    if problem is None:
        return rows[-1]
    return next(row for row in rows if row.applies(problem))


def resolve_backend(backend: str | None, device: torch.device | str, problem: Problem | None = None) -> str:
    device = torch.device(device)
    if backend is None:
        row = dispatch_row(device, problem)
        reason = unavailable_reason(row.backend, device)
        if reason is not None:  # the table's choice, not a silent second choice
            raise RuntimeError(f"the dispatch table picks {row.backend!r} here (row {row.name}, {row.evidence}), "
                               f"but it is unavailable: {reason}; pass backend= to choose another")
        return row.backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"attention backend {backend!r} is unavailable: {reason}")
    return backend


def backend_function(backend: str) -> Callable[..., torch.Tensor]:
    """fn(q, k, v, key_padding_mask, causal, scale); modules import lazily (triton, xformers are optional)."""
    if backend == "triton":
        from kernels.attention.triton_ops import triton_attention as fn
    elif backend == "xformers":
        from kernels.attention.xformers_backend import xformers_attention as fn
    elif backend == "sdpa":
        from kernels.attention.torch_backends import sdpa_attention as fn
    elif backend == "eager":
        from kernels.attention.torch_backends import eager_attention as fn
    else:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    return fn


def varlen_backend_function(backend: str) -> Callable[..., torch.Tensor]:
    """fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale) of attention_varlen."""
    if backend == "triton":
        from kernels.attention.triton_ops import triton_varlen_attention as fn
    elif backend == "sdpa":
        from kernels.attention.torch_backends import sdpa_varlen_attention as fn
    elif backend == "eager":
        from kernels.attention.torch_backends import eager_varlen_attention as fn
    else:
        raise ValueError(f"attention backend {backend!r} has no varlen form; attention_varlen takes one of "
                         f"{VARLEN_BACKENDS}")
    return fn
