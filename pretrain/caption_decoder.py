"""The caption decoder (KeepFIT V2's generative branch), a model option as CoCa's is in open_clip.

Every attention goes through `kernels.attention`.

    decoder = CaptionDecoder(vocab_size=30522, dim=512, depth=4, num_heads=8, max_len=77, image_dim=768)
    logits = decoder(input_ids, image_tokens, text_padding_mask=attention_mask)   # (B, L, vocab)

Each layer is pre-norm: causal self-attention over the caption (with key padding), cross-attention from
the caption to the image encoder's patch/grid tokens (with an optional image padding mask, e.g. for
variable-size grids), then an MLP. Padding masks follow `kernels.attention`: True (or 1, as a tokenizer's
attention_mask) marks a real token.

With unpad=True the captions run packed without padding (pretrain.text_packing): causal self-attention and the
cross-attention to each caption's own image go through `kernels.attention.attention_varlen`, and the logits come
back as (B, L, vocab) with zeros at the padding (targets there are ignored by the loss). Same logits at the real
tokens as the padded path; not with an image padding mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.attention import attention, attention_varlen
from pretrain.text_packing import PackedCaptions, pack_captions

__all__ = ["CaptionDecoder", "CaptionDecoderConfig", "CaptionDecoderLayer", "build_caption_decoder"]


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * head_dim)


class CaptionDecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, backend: str | None = None,
                 image_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.backend = num_heads, backend
        self.self_norm = nn.LayerNorm(dim)
        self.self_qkv = nn.Linear(dim, 3 * dim)
        self.self_proj = nn.Linear(dim, dim)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(image_dim or dim, 2 * dim)  # image tokens may be wider than the text
        self.cross_proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None,
               causal: bool = False) -> torch.Tensor:
        """(B, L, dim) projections in, (B, Lq, dim) out."""
        q, k, v = (_split_heads(t, self.num_heads) for t in (q, k, v))
        padding = None if padding_mask is None else padding_mask.bool()
        return _merge_heads(attention(q, k, v, causal=causal, key_padding_mask=padding, backend=self.backend))

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor, text_padding_mask: torch.Tensor | None = None,
                image_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, dim), image_tokens (B, N, image_dim), masks (B, L) / (B, N) -> (B, L, dim)."""
        q, k, v = self.self_qkv(self.self_norm(x)).chunk(3, dim=-1)
        x = x + self.self_proj(self.attend(q, k, v, text_padding_mask, causal=True))
        k, v = self.cross_kv(image_tokens).chunk(2, dim=-1)
        x = x + self.cross_proj(self.attend(self.cross_q(self.cross_norm(x)), k, v, image_padding_mask))
        return x + self.mlp(self.mlp_norm(x))

    def forward_packed(self, x: torch.Tensor, images: torch.Tensor, packed: PackedCaptions,
                       cu_images: torch.Tensor, image_len: int) -> torch.Tensor:
        """x (T, dim) packed caption tokens, images (B * N, image_dim) each caption's image tokens -> (T, dim)."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731  (T, dim) -> (T, H, Dh)
        cu, longest = packed.cu_seqlens, packed.max_len
        q, k, v = (heads(t) for t in self.self_qkv(self.self_norm(x)).chunk(3, dim=-1))
        attended = attention_varlen(q, k, v, cu, cu, longest, longest, causal=True, backend=self.backend)
        x = x + self.self_proj(attended.flatten(1))
        k, v = (heads(t) for t in self.cross_kv(images).chunk(2, dim=-1))
        q = heads(self.cross_q(self.cross_norm(x)))
        attended = attention_varlen(q, k, v, cu, cu_images, longest, image_len, backend=self.backend)
        x = x + self.cross_proj(attended.flatten(1))
        return x + self.mlp(self.mlp_norm(x))


class CaptionDecoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, depth: int, num_heads: int, max_len: int,
                 backend: str | None = None, image_dim: int | None = None, mlp_ratio: float = 4.0,
                 unpad: bool = False) -> None:
        super().__init__()
        self.max_len, self.num_heads, self.unpad = max_len, num_heads, unpad
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.trunc_normal_(self.token_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(CaptionDecoderLayer(dim, num_heads, mlp_ratio, backend, image_dim)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                text_padding_mask: torch.Tensor | None = None,
                image_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, L) -> next-token logits (B, L, vocab_size): position i sees tokens 0..i and the image."""
        seq = input_ids.shape[1]
        if seq > self.max_len:
            raise ValueError(f"caption of {seq} tokens is longer than max_len={self.max_len}")
        if self.unpad:
            return self._forward_packed(input_ids, image_tokens, text_padding_mask, image_padding_mask)
        x = self.token_embed(input_ids) + self.pos_embed[:seq]
        for layer in self.layers:
            x = layer(x, image_tokens, text_padding_mask, image_padding_mask)
        return self.lm_head(self.norm(x))

    def _forward_packed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                        text_padding_mask: torch.Tensor | None, image_padding_mask: torch.Tensor | None
                        ) -> torch.Tensor:
        if image_padding_mask is not None:
            raise ValueError("the unpadded caption decoder takes no image padding mask "
                             "(every image keeps its N tokens)")
        packed = pack_captions(input_ids, text_padding_mask)
        batch, image_len = image_tokens.shape[:2]
        # caption i cross-attends to image i: its N tokens are rows i * N ... (i + 1) * N of the flattened images
        cu_images = torch.arange(0, (batch + 1) * image_len, image_len, dtype=torch.int32, device=input_ids.device)
        x = self.token_embed(packed.input_ids[0]) + self.pos_embed[packed.position_ids[0]]
        images = image_tokens.flatten(0, 1)
        for layer in self.layers:
            x = layer.forward_packed(x, images, packed, cu_images, image_len)
        return packed.unpack(self.lm_head(self.norm(x)))


@dataclass
class CaptionDecoderConfig:
    dim: int | None = None
    """Decoder width; null: the text tower's hidden size."""
    depth: int = 2
    """Decoder layers (causal self-attention, cross-attention to the image tokens, MLP)."""
    num_heads: int = 8
    """Attention heads of every decoder attention; must divide dim."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    max_len: int | None = None
    """Longest caption (tokens) the decoder reads; null: model.text.max_len."""
    attention_backend: str | None = None
    """kernels.attention backend of the decoder (triton, xformers, sdpa, eager); null lets it choose (sdpa)."""
    unpad: bool = False
    """Run the captions packed without padding (kernels.attention.attention_varlen; triton, sdpa or eager): the
    same loss without computing the pads. No image padding mask."""


def build_caption_decoder(cfg: CaptionDecoderConfig, *, vocab_size: int, text_dim: int, text_max_len: int,
                          image_dim: int) -> CaptionDecoder:
    """The decoder a ModelConfig asks for, sized from the towers where the config leaves a field null."""
    return CaptionDecoder(vocab_size=vocab_size, dim=cfg.dim or text_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                          max_len=cfg.max_len or text_max_len, backend=cfg.attention_backend, image_dim=image_dim,
                          mlp_ratio=cfg.mlp_ratio, unpad=cfg.unpad)
