"""Kernel tests: without a GPU the Triton kernels run in the CPU interpreter.

`triton.jit` reads TRITON_INTERPRET when it decorates a kernel, so it is set here, before any test
module of this directory imports the kernels.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
