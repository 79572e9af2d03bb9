"""Route third-party models' attention through `kernels.attention.attention`, without copying model code.

    n = use_attention_backend(vit, backend="triton")    # timm: swaps its attention modules' forward
    register_transformers_attention(backend="triton")   # Hugging Face: registers attn_implementation="retinascale"
    bert = AutoModel.from_pretrained(path, attn_implementation="retinascale")

Both keep everything around the attention product (projections, q/k norms, gates, dropout after the
projection) and hand the kernel only what it expresses: a key padding mask and top-left causality. A
transformers model called on packed sequences (a batch of one row, with transformers' varlen keyword arguments
cu_seq_lens_q/k and max_length_q/k, as its flash-attention padding-free path takes them) runs
`kernels.attention.attention_varlen` instead.
Anything else (an additive bias, attention-probability dropout while training) raises instead of
being silently dropped.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
from torch import nn

from kernels.attention import BACKENDS, attention, attention_varlen

TRANSFORMERS_NAME = "retinascale"
# Additive masks use -inf or the dtype's minimum (BERT-era code: -10000); anything in between is a real bias.
MASKED_BELOW = -1e4


def _check_backend(backend: str | None) -> None:
    # Fail when wiring the model, not at its first forward.
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS} or None")


# ---------------------------------------------------------------- masks

def mask_to_padding(mask: torch.Tensor, batch: int, seq_q: int, seq_k: int) -> tuple[torch.Tensor, bool]:
    """An SDPA-style mask (bool True = may attend, or additive float), broadcastable to (B, H, Lq, Lk),
    as (key_padding_mask (B, Lk), causal); ValueError if it is not padding, optionally with top-left causality."""
    if mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed, masked = mask == 0, mask <= MASKED_BELOW
        if not bool((allowed | masked).all()):
            raise ValueError("the attention mask carries an additive bias (values other than 0 and -inf), which "
                             "kernels.attention cannot express; use the model's eager or sdpa attention")
    if allowed.dim() > 4:
        raise ValueError(f"attention mask of shape {tuple(mask.shape)} has more than 4 dimensions")
    allowed = allowed.reshape((1,) * (4 - allowed.dim()) + tuple(allowed.shape))
    # A key is real if any query may see it; then the mask must be exactly padding (& causal).
    padding = allowed.any(dim=1).any(dim=1).expand(batch, seq_k).contiguous()
    candidate = padding[:, None, None, :]
    if bool((allowed == candidate).all()):
        return padding, False
    tril = torch.ones(seq_q, seq_k, dtype=torch.bool, device=mask.device).tril()
    if bool((allowed == (candidate & tril)).all()):
        return padding, True
    raise ValueError(f"attention mask of shape {tuple(mask.shape)} is neither key padding nor key padding with "
                     "top-left causality, the only masks kernels.attention expresses (bottom-right causality from "
                     "a KV cache, sliding windows and packed sequences are not)")


class _LastMask:
    """Converts each mask once: a model passes one mask object to all of its layers, and checking it costs a
    host sync on the GPU."""

    def __init__(self) -> None:
        self.ref: weakref.ref | None = None
        self.key: tuple = ()
        self.value: tuple[torch.Tensor, bool] | None = None

    def convert(self, mask: torch.Tensor, batch: int, seq_q: int, seq_k: int) -> tuple[torch.Tensor, bool]:
        # Inference tensors keep no version counter (and cannot be changed in place outside inference mode).
        key = (None if mask.is_inference() else mask._version, batch, seq_q, seq_k)
        if self.ref is not None and self.ref() is mask and self.key == key and self.value is not None:
            return self.value
        self.value = mask_to_padding(mask, batch, seq_q, seq_k)
        self.ref, self.key = weakref.ref(mask), key
        return self.value


_last_mask = _LastMask()


# ---------------------------------------------------------------- timm

def _check_no_attn_dropout(module: nn.Module) -> None:
    if module.training and module.attn_drop.p > 0:
        raise RuntimeError(f"timm attention module {module.attention_name!r} has attention dropout "
                           f"p={module.attn_drop.p} in training mode, which kernels.attention does not support; "
                           "build the model with attn_drop_rate=0 or call model.eval()")


def _timm_attend(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """The kernel in place of timm's SDPA call, then timm's own output path (norm, gate, proj, proj_drop)."""
    _check_no_attn_dropout(module)
    padding, causal = None, is_causal
    if attn_mask is not None:
        padding, mask_causal = _last_mask.convert(attn_mask, q.shape[0], q.shape[2], k.shape[2])
        causal = causal or mask_causal
    return attention(q, k, v, causal=causal, key_padding_mask=padding, scale=module.scale,
                     backend=module.attention_backend)


def _timm_output(module: nn.Module, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    batch, _, seq, _ = x.shape
    x = module.norm(x.transpose(1, 2).reshape(batch, seq, module.attn_dim))
    if gate is not None:
        x = x * gate
    return module.proj_drop(module.proj(x))


def _attention_forward(self: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       is_causal: bool = False) -> torch.Tensor:
    """timm.layers.attention.Attention.forward with the kernel."""
    batch, seq, _ = x.shape
    gate = self.gate(x).sigmoid() if self.gate is not None else None
    q, k, v = self.qkv(x).reshape(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    return _timm_output(self, _timm_attend(self, q, k, v, attn_mask, is_causal), gate)


def _attention_rope_forward(self: nn.Module, x: torch.Tensor, rope: torch.Tensor | None = None,
                            attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """timm.layers.attention.AttentionRope.forward with the kernel."""
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    batch, seq, _ = x.shape
    gate = self.gate(x).sigmoid() if self.gate is not None else None
    if self.qkv is not None:
        q, k, v = self.qkv(x).reshape(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = self.q_proj(x).reshape(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).reshape(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).reshape(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
    q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
        npt, half = self.num_prefix_tokens, self.rotate_half
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
    if self.num_kv_groups > 1:  # the kernel wants as many k/v heads as query heads
        k = k.repeat_interleave(self.num_kv_groups, dim=1)
        v = v.repeat_interleave(self.num_kv_groups, dim=1)
    return _timm_output(self, _timm_attend(self, q, k, v, attn_mask, is_causal), gate)


@functools.cache
def _kernel_classes() -> dict[type, type]:
    """timm class -> its subclass whose forward calls the kernel.

    timm.models.vision_transformer.Attention is timm.layers.attention.Attention (ViT, DeiT, CLIP towers, ...);
    AttentionRope has the same qkv/proj layout plus rotary embeddings and grouped k/v heads (EVA-02, DINOv3-style
    ViTs). EvaAttention (separate q/v biases), RelPosAttention and SAM's Attention add position biases to the
    scores, which the kernel cannot express, so they are left alone.
    """
    from timm.layers.attention import Attention, AttentionRope

    def subclass(base: type, forward: Callable) -> type:
        name = f"Kernel{base.__name__}"
        return type(name, (base,), {"forward": forward, "__module__": __name__, "__qualname__": name,
                                    "__doc__": f"timm's {base.__name__} with kernels.attention in place of SDPA."})

    return {Attention: subclass(Attention, _attention_forward),
            AttentionRope: subclass(AttentionRope, _attention_rope_forward)}


def __getattr__(name: str) -> type:
    # pickle (torch.save of a whole model) finds the subclasses by name; they are built on first use to keep
    # timm out of the transformers-only imports.
    if name in ("KernelAttention", "KernelAttentionRope"):
        return next(c for c in _kernel_classes().values() if c.__name__ == name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_attention_backend(model: nn.Module, backend: str | None = None) -> int:
    """Make every timm Attention/AttentionRope in `model` call `kernels.attention.attention(backend=...)`.

    Each instance's class becomes a subclass whose forward calls the kernel: parameters, state dicts and
    isinstance checks are unchanged, and a whole-model torch.save still loads. Calling again switches the
    backend. Returns the number of modules patched; ValueError if there are none.
    """
    _check_backend(backend)
    classes = _kernel_classes()
    patched = 0
    for name, module in model.named_modules():
        # Exact types: a subclass may change the forward's maths, and patching it would silently undo that.
        if type(module) in classes:
            module.__class__ = classes[type(module)]
        elif type(module) not in classes.values():
            continue
        module.attention_name = name or type(module).__base__.__name__
        module.attention_backend = backend
        patched += 1
    if patched == 0:
        raise ValueError(f"{type(model).__name__} has no timm attention module "
                         f"({' or '.join(c.__name__ for c in classes)} from timm.layers.attention) to route "
                         "through kernels.attention")
    return patched


# ---------------------------------------------------------------- transformers

_UNSUPPORTED_KWARGS = ("softcap", "sliding_window", "position_bias", "s_aux", "sinks")


def _packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None, backend: str | None,
                      kwargs: dict) -> torch.Tensor:
    """Packed sequences: (1, H, T, Dh) in, (1, T, H, Dh) out, each token attending within its own sequence."""
    name = type(module).__name__
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{name}: packed sequences (cu_seq_lens_q/k) come as one batch row without an attention "
                         f"mask, got a batch of {query.shape[0]} and a mask {attention_mask is not None}")
    missing = [k for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k") if kwargs.get(k) is None]
    if missing:
        raise ValueError(f"{name}: packed sequences need {', '.join(missing)} as well")
    is_causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, Dh)
    out = attention_varlen(q, k, v, kwargs["cu_seq_lens_q"].to(torch.int32), kwargs["cu_seq_lens_k"].to(torch.int32),
                           int(kwargs["max_length_q"]), int(kwargs["max_length_k"]), causal=bool(causal),
                           scale=scaling, backend=backend)
    return out[None]


def _transformers_attention(backend: str | None) -> Callable[..., tuple[torch.Tensor, None]]:
    def retinascale_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                                      scaling: float | None = None, dropout: float = 0.0,
                                      **kwargs) -> tuple[torch.Tensor, None]:
        """transformers' attention-function contract: (B, H, L, Dh) in, ((B, Lq, H, Dh), no weights) out."""
        name = type(module).__name__
        if dropout > 0 and module.training:
            raise RuntimeError(f"{name}: attention dropout p={dropout} in training mode is not supported by "
                               f"attn_implementation={TRANSFORMERS_NAME!r}; load the model with "
                               "attention_probs_dropout_prob=0 (attention_dropout=0 for newer models) or call "
                               "model.eval()")
        unsupported = [k for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
        if unsupported:
            raise ValueError(f"{name}: {', '.join(unsupported)} is not supported by "
                             f"attn_implementation={TRANSFORMERS_NAME!r}")
        groups = getattr(module, "num_key_value_groups", 1)
        if groups > 1:  # grouped-query attention: the kernel wants as many k/v heads as query heads
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None:
            return _packed_attention(module, query, key, value, attention_mask, scaling, backend, kwargs), None
        batch, seq_q, seq_k = query.shape[0], query.shape[2], key.shape[2]
        padding = None
        if attention_mask is not None:
            # The model already folded causality into the mask (that is what transformers' sdpa path trusts too).
            padding, causal = _last_mask.convert(attention_mask, batch, seq_q, seq_k)
        else:
            # As transformers' sdpa_attention_forward: a call-site flag wins over the module's, and a single
            # query (a decoding step) attends to everything.
            is_causal = kwargs.get("is_causal")
            causal = seq_q > 1 and (getattr(module, "is_causal", True) if is_causal is None else is_causal)
            if causal and seq_q != seq_k:
                raise ValueError(f"{name}: causal attention with {seq_q} queries over {seq_k} cached keys needs "
                                 "bottom-right alignment; kernels.attention is top-left aligned")
        out = attention(query, key, value, causal=causal, key_padding_mask=padding, scale=scaling, backend=backend)
        return out.transpose(1, 2).contiguous(), None

    return retinascale_attention_forward


def register_transformers_attention(backend: str | None = None, name: str = TRANSFORMERS_NAME) -> str:
    """Register `name` as a transformers attention implementation running `kernels.attention` (idempotent;
    registering again switches the backend). Returns the name for `attn_implementation=`."""
    _check_backend(backend)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, _transformers_attention(backend))
    # Without a mask function of its own transformers builds no mask at all for an unknown implementation, and
    # padding would be silently ignored; SDPA's boolean masks are what `mask_to_padding` reads.
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
