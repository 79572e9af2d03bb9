"""Dynamic caption padding (pretrain.data.Collate, text_padding): batch shapes and which pooling gets which padding.

That the padded length does not change cls / flair_masked embeddings is tested with every attention backend in
tests/kernels/test_text_unpad.py (the triton backend needs the interpreter set up there).
"""

from __future__ import annotations

import pytest
import torch

from pretrain.caption_padding import PAD_MULTIPLE, text_padding
from pretrain.data import Collate


def _samples(texts: list[str]) -> list[dict]:
    return [{"text": t, "image": torch.zeros(3, 4, 4), "labels": [0], "category_id": 0, "key": str(i),
             "dataset": "d"} for i, t in enumerate(texts)]


def test_paddings_follow_the_pooling():
    assert text_padding("ours", "cls") == text_padding("flair", "flair_masked") == "dynamic"
    assert text_padding("ours", "flair") == "max_length"  # flair pooling averages the pads: keep their count
    assert text_padding("flair", "flair") == "longest"  # FLAIR's own padding
    assert text_padding("ours", None) == "max_length"


@pytest.mark.parametrize("words, max_len", [(3, 32), (11, 32), (40, 32), (0, 32), (5, 13)])
def test_dynamic_padding_rounds_the_longest_caption_up(tokenizer, words, max_len):
    texts = ["fundus " * words, "a", "optic disc cupping with a small haemorrhage"]
    longest = Collate(tokenizer, max_len, 1, "longest")(_samples(texts))
    dynamic = Collate(tokenizer, max_len, 1, "dynamic")(_samples(texts))
    lengths = longest["attention_mask"].sum(1)
    width = dynamic["input_ids"].shape[1]
    assert width == min(-(-int(lengths.max()) // PAD_MULTIPLE) * PAD_MULTIPLE, max_len)
    assert dynamic["attention_mask"].shape == (3, width) and width >= longest["input_ids"].shape[1]
    # the same tokens, then pad ids with a zero mask
    assert torch.equal(dynamic["attention_mask"].sum(1), lengths)
    real = longest["input_ids"].shape[1]
    assert torch.equal(dynamic["input_ids"][:, :real], longest["input_ids"])
    assert (dynamic["input_ids"][:, real:] == tokenizer.pad_token_id).all()
    assert (dynamic["attention_mask"][:, real:] == 0).all()


def test_unknown_padding_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="padding"):
        Collate(tokenizer, 32, 1, "to_multiple")
