"""The contrastive benchmark's providers: what each computes, how much work it does, and its inputs.

    triton        kernels' stripe kernels (CUDA): one set of similarity tiles serves both directions
    chunked       kernels' pure-torch stripe: the same design, O(B x chunk) memory
    chunked_2dir  the v1 design for comparison: each direction a stripe of its own (the rectangular form
                  of `contrastive_loss` with image_keys = image, text_keys = text), as the v1 chunked path did
    eager         kernels' dense reference, every B x B matrix materialised
    open_clip     open_clip.loss.ClipLoss, the external baseline
    inf_cl        Inf-CL's `cal_inf_loss` (PyPI inf-cl, CUDA only), once per direction as its README does
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

PROVIDERS = ("triton", "chunked", "chunked_2dir", "eager", "open_clip", "inf_cl")
CUDA_ONLY = ("triton", "inf_cl")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_SCALE = 100.0

# B x B x D products (2 B^2 D FLOPs each) every provider performs, (forward, backward), read from each code:
PRODUCTS = {
    "triton": (1, 3),  # forward: the similarity tiles; backward: their recomputation in the dS kernel, dq, dk
    "chunked": (1, 3),  # the same, chunk by chunk
    "chunked_2dir": (2, 6),  # twice the above, one stripe per direction
    "eager": (2, 4),  # both directions' logits; dq and dk of each
    "open_clip": (2, 4),  # image @ text.T and text @ image.T; dq and dk of each
    "inf_cl": (2, 8),  # per direction: forward; a dq kernel (recompute + dq) and a dk kernel (recompute + dk)
}
PRODUCTS_NOTE = ("one product = one B x B x D multiply-add sweep = 2 B^2 D FLOPs; TFLOP/s = the FLOPs a "
                 "provider performs over its median time (mode forward: the forward products, backward: the "
                 "backward ones, full: both)")


def flops(provider: str, mode: str, batch: int, dim: int) -> float:
    forward, backward = PRODUCTS[provider]
    products = {"forward": forward, "backward": backward, "full": forward + backward}[mode]
    return products * 2.0 * batch * batch * dim


def make_inputs(batch: int, dim: int, dtype: str, device: torch.device,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-normalised leaf embeddings and a logit scale, all with gradients, as a training step has them."""
    torch.manual_seed(seed)

    def embedding() -> torch.Tensor:
        x = F.normalize(torch.randn(batch, dim, device=device), dim=1)
        return x.to(DTYPES[dtype]).requires_grad_()

    # The scale stays fp32, like CLIP's logit_scale parameter.
    scale = torch.tensor(LOGIT_SCALE, device=device, requires_grad=True)
    return embedding(), embedding(), scale


def make_loss(provider: str, chunk_size: int) -> Callable[..., torch.Tensor]:
    """loss(image, text, scale) of a provider."""
    if provider == "open_clip":
        from open_clip.loss import ClipLoss  # heavy import: only when asked for

        return ClipLoss()
    if provider == "inf_cl":
        from inf_cl import cal_inf_loss

        return lambda image, text, scale: (cal_inf_loss(image, text, scale=scale)
                                           + cal_inf_loss(text, image, scale=scale)) / 2
    from kernels.contrastive import contrastive_loss

    if provider == "chunked_2dir":
        return lambda image, text, scale: contrastive_loss(image, text, scale, image_keys=image, text_keys=text,
                                                           backend="chunked", chunk_size=chunk_size)
    return functools.partial(contrastive_loss, backend=provider, chunk_size=chunk_size)


def available_providers(requested: list[str], device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The requested providers this device can run, and why the others are skipped."""
    skipped = {}
    for provider in requested:
        if provider in CUDA_ONLY and device.type != "cuda":
            skipped[provider] = "needs CUDA"
        elif provider == "triton" and importlib.util.find_spec("triton") is None:
            skipped[provider] = "triton is not installed"
        elif provider == "inf_cl" and importlib.util.find_spec("inf_cl") is None:
            skipped[provider] = "inf_cl is not installed (pip install inf-cl)"
        elif provider == "open_clip" and importlib.util.find_spec("open_clip") is None:
            skipped[provider] = "open_clip is not installed"
    return [p for p in requested if p not in skipped], skipped
