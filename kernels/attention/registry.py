"""Attention backends: names, availability on a device, and the resolver `attention()` calls.

An explicitly requested backend that cannot run raises RuntimeError with the reason; only
`backend=None` chooses, and it picks "sdpa" everywhere: on an H100, torch's SDPA (FlashAttention) beat our
Triton kernel at every measured shape (benchmarks/results/gpu-h100-notes.md), so Triton is opt-in.
"""

from __future__ import annotations

import functools
import os
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


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    device = torch.device(device)
    if backend is None:
        return "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"attention backend {backend!r} is unavailable: {reason}")
    return backend


def backend_function(backend: str) -> Callable[..., torch.Tensor]:
    """fn(q, k, v, key_padding_mask, causal, scale); modules import lazily (triton, xformers are optional)."""
    if backend == "triton":
        from kernels.attention.triton_flash import triton_attention as fn
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
        from kernels.attention.triton_flash import triton_varlen_attention as fn
    elif backend == "sdpa":
        from kernels.attention.torch_backends import sdpa_varlen_attention as fn
    elif backend == "eager":
        from kernels.attention.torch_backends import eager_varlen_attention as fn
    else:
        raise ValueError(f"attention backend {backend!r} has no varlen form; attention_varlen takes one of "
                         f"{VARLEN_BACKENDS}")
    return fn
