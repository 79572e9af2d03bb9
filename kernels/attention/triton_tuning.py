"""The autotune space of the Triton attention kernels (kernels.attention.triton_flash), pruned with the sm_90a
resource report, and the choice of kernel and tiles per launch (autotuned on a GPU, fixed in the interpreter)."""

from __future__ import annotations

import torch
import triton

from kernels.attention.triton_flash import attn_bwd_dkdv_kernel, attn_bwd_dq_kernel, attn_fwd_kernel
from kernels.triton_common import interpreting

# The autotune space, pruned with the sm_90a resource report (`retina-bench resources --families attention`,
# benchmarks/results/attention-resources-sm90.json): only tiles that compile without register spills for the
# heaviest variant (causal + key padding mask) are listed, so no spilling configuration is ever tried and
# tuning compiles a few configs instead of 16. Keys: (kernel, fp32?, BLOCK_D); values: (program block, looped
# block, num_warps, num_stages), the program block being BLOCK_M for "fwd" and "dq", BLOCK_N for "dkdv".
# Why these: 16-bit tiles of 128 rows spill at 4 warps (the fp32 accumulators of one 128 x Dh tile alone
# take 128 registers a thread at Dh = 128), so 128-row tiles use 8 warps; fp32 operands take twice the
# registers of 16-bit ones and run on FMA units (no wgmma), so fp32 gets its own small tiles at 8 warps, and
# at Dh = 128 the dk/dv kernel (which holds k, v, dk, dv) fits only 32 x 16 and 16 x 32. Entries within 16
# registers of the 255 cap are left out too (e.g. 16-bit Dh = 128: dq 128 x 64, dk/dv 128 x 32 and 64 x 64 at
# 254-255): an older Triton (the GPU machine's) or ptxas may allocate a few more and spill. The 16-wide
# head-dim tile shares the rows of 32 and 64 (it needs fewer registers than either); Dh 129..256 get one
# small config each. tests/kernels/test_resources.py compiles every entry for Dh 32, 64, 128 and asserts
# no spills and at most 240 registers.
_16BIT_FWD = ((128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 32, 4, 3))
_16BIT_DQ = ((128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3))
TUNE_SPACE = {
    **{(kernel, False, d): space for d in (16, 32, 64)
       for kernel, space in (("fwd", _16BIT_FWD), ("dq", _16BIT_DQ),
                             ("dkdv", ((128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2))))},
    ("fwd", False, 128): ((128, 64, 8, 2), (128, 32, 8, 3), (64, 32, 4, 3)),
    ("dq", False, 128): ((128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3)),
    ("dkdv", False, 128): ((64, 32, 8, 2), (64, 32, 8, 3), (32, 64, 8, 2)),
    ("fwd", False, 256): ((64, 32, 8, 2),),
    ("dq", False, 256): ((64, 32, 8, 2),),
    ("dkdv", False, 256): ((32, 32, 8, 2),),
    **{(kernel, True, d): space for d in (16, 32, 64)
       for kernel, space in (("fwd", ((64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 8, 2))),
                             ("dq", ((64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 8, 2))),
                             ("dkdv", ((32, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2))))},
    ("fwd", True, 128): ((32, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2)),
    ("dq", True, 128): ((32, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2)),
    ("dkdv", True, 128): ((32, 16, 8, 2), (16, 32, 8, 2)),
    ("fwd", True, 256): ((32, 16, 8, 2),),
    ("dq", True, 256): ((32, 16, 8, 2),),
    ("dkdv", True, 256): ((16, 16, 8, 2),),
}
_BLOCKS = {"fwd": ("BLOCK_M", "BLOCK_N"), "dq": ("BLOCK_M", "BLOCK_N"), "dkdv": ("BLOCK_N", "BLOCK_M")}


def _config(kernel: str, entry: tuple[int, int, int, int]) -> triton.Config:
    outer, inner = _BLOCKS[kernel]
    return triton.Config({outer: entry[0], inner: entry[1]}, num_warps=entry[2], num_stages=entry[3])


def tune_configs(kernel: str, fp32: bool, block_d: int) -> list[triton.Config]:
    """The configurations the autotuner tries for one kernel, input dtype class and head-dim tile."""
    return [_config(kernel, entry) for entry in TUNE_SPACE[(kernel, fp32, block_d)]]


def _config_id(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


def _autotuned(kernel: str, fn):
    """fn autotuned over the union of its table entries; each launch keeps only its own (dtype, BLOCK_D) row."""
    union = {_config_id(c): c for (name, _, _), entries in TUNE_SPACE.items() if name == kernel
             for c in (_config(kernel, e) for e in entries)}

    def prune(configs, named_args, **kwargs):
        fp32 = named_args["q_ptr"].dtype == torch.float32
        wanted = {_config_id(c) for c in tune_configs(kernel, fp32, kwargs["BLOCK_D"])}
        return [c for c in configs if _config_id(c) in wanted]

    return triton.autotune(list(union.values()), key=_TUNE_KEY, prune_configs_by={"early_config_prune": prune})(fn)


# Tuned per problem shape and mask kind (the tensor dtypes are part of triton's key already). Every
# kernel only stores its outputs (the dq kernel's delta included), so the autotuner's repeated runs need no reset.
_TUNE_KEY = ["seq_q", "seq_k", "HEAD_DIM", "CAUSAL", "HAS_PAD", "VARLEN"]
if interpreting():  # autotuning would run every config in the interpreter: fixed 16 x 16 tiles instead
    fwd_tuned = dkdv_tuned = dq_tuned = None
else:
    fwd_tuned = _autotuned("fwd", attn_fwd_kernel)
    dkdv_tuned = _autotuned("dkdv", attn_bwd_dkdv_kernel)
    dq_tuned = _autotuned("dq", attn_bwd_dq_kernel)


def pick_kernel(plain, tuned, block_m: int | None, block_n: int | None):
    """(kernel, launch options): the smallest tl.dot tiles (16) in the interpreter; on a GPU the
    autotuned kernel unless the caller forces block sizes (tests, benchmarks)."""
    if tuned is None:
        return plain, dict(BLOCK_M=block_m or 16, BLOCK_N=block_n or 16)
    if block_m is not None or block_n is not None:
        return plain, dict(BLOCK_M=block_m or 64, BLOCK_N=block_n or 32, num_warps=4, num_stages=2)
    return tuned, {}
