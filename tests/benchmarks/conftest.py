"""Benchmark tests: without a GPU the Triton kernels run in the CPU interpreter, as in tests/kernels.

`triton.jit` reads TRITON_INTERPRET when it decorates a kernel, so it is set here, before any test
module of this directory imports the benchmarks (which import the kernels); the benchmark processes
the tests start inherit it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
