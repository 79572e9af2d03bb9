"""How a batch of captions is padded: to max_len, to the longest caption (FLAIR's), or dynamically (the longest
rounded up to PAD_MULTIPLE, capped at max_len); `text_padding` says which one a text pooling allows."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PAD_MULTIPLE", "TEXT_PADDINGS", "pad_tokens", "text_padding", "tokenize_captions"]

PAD_MULTIPLE = 8  # dynamic padding rounds the batch's longest caption up to this (tensor-core friendly shapes)
TEXT_PADDINGS = ("max_length", "longest", "dynamic")


def text_padding(style: str, pooling: str | None) -> str:
    """How training batches pad their captions, given data.style and the text tower's pooling.

    `dynamic` (the batch's longest caption rounded up to PAD_MULTIPLE, capped at max_text_len) wherever the
    pads cannot change the result: `cls` and `flair_masked` pooling mask them out of attention and pooling.
    `flair` pooling averages over every position, pads included (FLAIR's TextModel.forward), so its feature
    depends on the pad length: it keeps the padding it had (FLAIR's own, the batch's longest caption, under
    style flair; max_length otherwise). None (pooling unknown) is treated like `flair`: the safe choice.
    """
    if pooling is None or pooling == "flair":
        return "longest" if style == "flair" else "max_length"
    return "dynamic"


def pad_tokens(tokens: dict[str, torch.Tensor], length: int, pad_id: int, side: str = "right") -> dict:
    """Tokenizer output (B, L) padded on `side` to (B, length): input_ids with pad_id, the rest with 0."""
    extra = length - tokens["input_ids"].shape[1]
    if extra <= 0:
        return tokens
    widths = (0, extra) if side == "right" else (extra, 0)
    return {name: torch.nn.functional.pad(t, widths, value=pad_id if name == "input_ids" else 0)
            for name, t in tokens.items()}


def tokenize_captions(tokenizer: Any, texts: list[str], max_len: int, padding: str) -> dict[str, torch.Tensor]:
    """The tokenizer's output for `texts` (truncated to max_len) padded as `padding` says (TEXT_PADDINGS)."""
    hf_padding = "longest" if padding == "dynamic" else padding
    tokens = dict(tokenizer(texts, padding=hf_padding, truncation=True, max_length=max_len, return_tensors="pt"))
    if padding == "dynamic":
        # not the tokenizer's pad_to_multiple_of: that rounds past max_length (77 -> 80)
        longest = tokens["input_ids"].shape[1]
        target = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, max_len)
        tokens = pad_tokens(tokens, target, tokenizer.pad_token_id, tokenizer.padding_side)
    return tokens
