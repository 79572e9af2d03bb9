"""pretrain.captioning: BLEU-4 and ROUGE-L against hand-worked examples, and greedy generation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.caption_decoder import CaptionDecoder
from pretrain.captioning import (bleu_stats, corpus_bleu, greedy_generate, lcs_length, rouge_l, rouge_l_sentence,
                                 words)

CAT = "the cat sat on the mat"
CAT_REF = "the cat is on the mat"


def test_words_lowercase_and_split_punctuation():
    assert words("Drusen, near the Macula.") == ["drusen", ",", "near", "the", "macula", "."]


def test_bleu_stats_by_hand():
    # 1-grams: the x2, cat, on, mat match (sat does not): 5/6; 2-grams: "the cat", "on the", "the mat": 3/5;
    # 3-grams: "on the mat": 1/4; 4-grams: none of 3.
    s = bleu_stats([CAT], [CAT_REF])
    assert s == {"matches": [5, 3, 1, 0], "counts": [6, 5, 4, 3], "hyp_len": 6, "ref_len": 6}


def test_bleu_clips_counts_by_the_best_reference():
    # "the" x4 in the hypothesis, at most 2 in one reference: 2 clipped matches of 4
    s = bleu_stats(["the the the the"], [["the cat", "the the dog"]])
    assert s["matches"][0] == 2 and s["counts"][0] == 4
    assert s["ref_len"] == 3  # closest reference length to 4 words: 3 (over 2)


def test_sentence_bleu_with_smoothing_by_hand():
    # p = 5/6, 3/5, 1/4 and the smoothed 0.1/3; product 1/240; equal lengths, so no brevity penalty
    assert corpus_bleu([CAT], [CAT_REF]) == pytest.approx((1 / 240) ** 0.25)


def test_corpus_bleu_sums_counts_and_applies_brevity_by_hand():
    hyps, refs = [CAT, "a dog runs"], [CAT_REF, "a dog runs fast"]
    # corpus sums: 8/9, 5/7, 2/5, 0/3 -> 0.1/3; c = 9 words, r = 10 -> BP = exp(1 - 10/9)
    expected = math.exp(1 - 10 / 9) * ((8 / 9) * (5 / 7) * (2 / 5) * (0.1 / 3)) ** 0.25
    assert corpus_bleu(hyps, refs) == pytest.approx(expected)


def test_bleu_edge_cases():
    assert corpus_bleu(["optic disc cupping in the right eye"], ["Optic disc cupping in the right eye"]) == 1.0
    assert corpus_bleu([""], ["a reference"]) == 0.0
    with pytest.raises(ValueError):
        corpus_bleu(["a", "b"], ["a"])


def test_lcs_length():
    assert lcs_length(words(CAT), words(CAT_REF)) == 5  # the cat on the mat
    assert lcs_length("abcbdab", "bdcaba") == 4  # the textbook example (BCBA)
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_by_hand():
    # LCS 3: P = 1, R = 3/6; F = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert rouge_l_sentence("the cat sat", CAT) == pytest.approx(2.44 * 0.5 / 1.94)
    assert rouge_l_sentence(CAT, CAT_REF) == pytest.approx(5 / 6)  # P = R = 5/6
    assert rouge_l_sentence("drusen", "normal fundus") == 0.0
    # several references: best precision and best recall separately (COCO's choice)
    assert rouge_l_sentence("the cat sat", ["the cat", "the cat sat on it"]) == pytest.approx(
        2.44 * 1.0 * 1.0 / (1.0 + 1.44 * 1.0))  # P = 3/3 from the second; R = 2/2 from the first
    assert rouge_l(["the cat sat", CAT], [CAT, CAT_REF]) == pytest.approx((2.44 * 0.5 / 1.94 + 5 / 6) / 2)


class ScriptedDecoder(nn.Module):
    """Logits that make greedy decoding follow a script: after k tokens, the script's token k (per row)."""

    def __init__(self, scripts: list[list[int]], vocab: int = 10, max_len: int = 8):
        super().__init__()
        self.scripts, self.vocab, self.max_len = scripts, vocab, max_len

    def forward(self, ids, image_tokens, text_padding_mask=None, image_padding_mask=None):
        batch, length = ids.shape
        logits = torch.zeros(batch, length, self.vocab)
        for b in range(batch):
            for pos in range(length):
                script = self.scripts[b]
                logits[b, pos, script[min(pos, len(script) - 1)]] = 1.0
        return logits


def test_greedy_generate_stops_at_eos_and_max_len():
    bos, eos = 1, 2
    decoder = ScriptedDecoder([[5, 6, eos, 7], [4, eos], [3, 3, 3, 3, 3, 3, 3, 3]])
    out = greedy_generate(decoder, torch.zeros(3, 4, 8), bos_id=bos, eos_id=eos)
    assert out == [[5, 6], [4], [3] * 7]  # row 3 never ends: max_len 8 counts bos
    assert greedy_generate(decoder, torch.zeros(3, 4, 8), bos_id=bos, eos_id=eos, max_len=3) == [[5, 6], [4], [3, 3]]


def test_greedy_generate_matches_teacher_forced_argmax():
    torch.manual_seed(0)
    decoder = CaptionDecoder(vocab_size=23, dim=16, depth=1, num_heads=2, max_len=9, image_dim=12).eval()
    image = torch.randn(2, 5, 12)
    out = greedy_generate(decoder, image, bos_id=1, eos_id=2)
    for row, ids in enumerate(out):
        prefix = torch.tensor([[1, *ids]])
        argmax = decoder(prefix, image[row:row + 1])[0].argmax(-1).tolist()
        assert argmax[:len(ids)] == ids  # every generated token is the argmax given the tokens before it
        assert len(ids) == 8 or argmax[len(ids)] == 2  # and it stopped at eos or max_len
