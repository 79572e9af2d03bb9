"""Triton helpers shared by the kernels of this package."""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def mm(a, b, FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # The interpreter (triton 3.8) returns garbage for 16-bit tl.dot; there the operands (already
    # rounded to the input dtype) are upcast, which gives the fp32-accumulated product a GPU gives.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        out = tl.dot(a, b, input_precision=FP32_PRECISION)
    else:  # 16-bit operands: native MMA, fp32 accumulator
        out = tl.dot(a, b)
    return out


@triton.jit
def mm_acc(a, b, acc, FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with an fp32 accumulator (the form the pipeliner and Hopper's wgmma take best)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision=FP32_PRECISION)
    else:
        acc = tl.dot(a, b, acc)
    return acc
