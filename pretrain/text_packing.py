"""Captions packed without padding, for a text tower that runs on `kernels.attention.attention_varlen`.

    packed = pack_captions(input_ids, attention_mask)   # (B, L) padded -> one (1, T) row, T = real tokens
    hidden = bert(input_ids=packed.input_ids, position_ids=packed.position_ids, **packed.attention_kwargs())
    features = hidden.last_hidden_state[0, packed.starts]          # each caption's first token ([CLS])

The captions sit end to end in one batch row; cu_seqlens (int32, n + 1) marks where each begins, and the
attention function restricts every token to its own caption. Position ids restart at 0 for every caption,
counting from its first real token, as right padding (BERT's) gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.attention import cu_seqlens_from_lengths

__all__ = ["PackedCaptions", "pack_captions"]


@dataclass
class PackedCaptions:
    input_ids: torch.Tensor
    """(1, T) the real tokens of every caption, in order."""
    position_ids: torch.Tensor
    """(1, T) each token's position within its caption."""
    segments: torch.Tensor
    """(T,) the caption each token belongs to."""
    lengths: torch.Tensor
    """(n,) tokens per caption."""
    cu_seqlens: torch.Tensor
    """int32 (n + 1,) offsets of the captions in the packed row."""
    max_len: int
    """The longest caption."""
    mask: torch.Tensor
    """(B, L) bool, the real tokens of the padded batch (to scatter packed tokens back)."""

    @property
    def starts(self) -> torch.Tensor:
        """(n,) the packed index of each caption's first token."""
        return self.cu_seqlens[:-1].long()

    def attention_kwargs(self) -> dict:
        """transformers' varlen keyword arguments (FlashAttentionKwargs), passed down to every attention call."""
        return {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
                "max_length_q": self.max_len, "max_length_k": self.max_len}

    def segment_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, H) per-token values -> (..., n, H) each caption's mean over its tokens."""
        sums = x.new_zeros(*x.shape[:-2], len(self.lengths), x.shape[-1]).index_add(-2, self.segments, x)
        return sums / self.lengths.clamp(min=1).to(x.dtype)[:, None]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, H) packed tokens -> (B, L, H) in their padded places, zeros at the padding."""
        return x.new_zeros(*self.mask.shape, x.shape[-1]).masked_scatter(self.mask[..., None], x)


def pack_captions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> PackedCaptions:
    """Pack a padded (B, L) batch; attention_mask 1 marks a real token (None: every token is real). A caption
    without any token is an error (it has no [CLS] to pool)."""
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(torch.bool))
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a caption has no tokens (its attention_mask row is all 0): nothing to pack")
    cu_seqlens = cu_seqlens_from_lengths(lengths)
    segments = torch.repeat_interleave(torch.arange(len(lengths), device=input_ids.device), lengths)
    positions = torch.arange(len(segments), device=input_ids.device) - cu_seqlens[:-1].long()[segments]
    return PackedCaptions(input_ids=input_ids[mask][None], position_ids=positions[None], segments=segments,
                          lengths=lengths, cu_seqlens=cu_seqlens, max_len=int(lengths.max()), mask=mask)
