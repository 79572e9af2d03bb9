"""pretrain.captioning: BLEU-4 and ROUGE-L (pycocoevalcap on our tokens) by hand and on real captions, and greedy
generation."""

from __future__ import annotations

import csv
import math
from collections import Counter

import pytest
import torch
from torch import nn

from pretrain.caption_decoder import CaptionDecoder
from pretrain.captioning import corpus_bleu, greedy_generate, rouge_l, rouge_l_sentence, words

CAT = "the cat sat on the mat"
CAT_REF = "the cat is on the mat"


def test_words_lowercase_and_split_punctuation():
    assert words("Drusen, near the Macula.") == ["drusen", ",", "near", "the", "macula", "."]


def test_bleu_by_hand_with_brevity_penalty():
    # vs "the cat sat on the red mat": 1-grams 6/6; 2-grams 4/5 ("on the" yes, "the mat" no);
    # 3-grams 3/4; 4-grams 2/3. c = 6 < r = 7 -> BP = exp(1 - 7/6)
    expected = math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert corpus_bleu([CAT], ["the cat sat on the red mat"]) == pytest.approx(expected, rel=1e-6)


def test_corpus_bleu_sums_counts_over_sentences():
    hyps, refs = [CAT, "a dog runs"], ["the cat sat on the red mat", "a dog runs fast"]
    # corpus sums, not a mean of sentence scores: 9/9, 6/7, 4/5, 2/3; c = 9, r = 7 + 4 = 11
    expected = math.exp(1 - 11 / 9) * (1 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, rel=1e-6)


def test_bleu_clips_by_the_best_reference_and_takes_the_closest_length():
    # "the" x4, at most 2 in one reference -> 2/4; closest reference length to 4 is 3, and c > r: no penalty
    assert corpus_bleu(["the the the the"], [["the cat", "the the dog"]], max_n=1) == pytest.approx(0.5, rel=1e-6)
    # lengths 3 and 5 are equally close to 4: the shorter counts, so no brevity penalty
    assert corpus_bleu(["a b c d"], [["a b c", "a b c d e"]], max_n=1) == pytest.approx(1.0, rel=1e-6)


def test_bleu_is_unsmoothed():
    # CAT vs CAT_REF has no 4-gram in common: BLEU-3 is (5/6 * 3/5 * 1/4)^(1/3), BLEU-4 is about 0
    assert corpus_bleu([CAT], [CAT_REF], max_n=3) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), rel=1e-6)
    assert corpus_bleu([CAT], [CAT_REF]) < 1e-3


def test_bleu_tokens_are_words():
    # case folds; the comma and full stop are tokens: 2 of 4 hypothesis tokens match, c = 4 > r = 2
    assert corpus_bleu(["Drusen, macula."], ["drusen macula"], max_n=1) == pytest.approx(0.5, rel=1e-6)


def test_bleu_edge_cases():
    same = corpus_bleu(["optic disc cupping in the right eye"], ["Optic disc cupping in the right eye"])
    assert same == pytest.approx(1.0, abs=1e-6)
    assert corpus_bleu([""], ["a reference"]) == 0.0
    with pytest.raises(ValueError):
        corpus_bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [[]])


def test_rouge_l_by_hand():
    # LCS 3: P = 1, R = 3/6; F = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert rouge_l_sentence("the cat sat", CAT) == pytest.approx(2.44 * 0.5 / 1.94)
    assert rouge_l_sentence(CAT, CAT_REF) == pytest.approx(5 / 6)  # LCS "the cat on the mat": P = R = 5/6
    assert rouge_l_sentence("drusen", "normal fundus") == 0.0
    assert rouge_l_sentence("", "normal fundus") == 0.0
    # several references: best precision and best recall separately (COCO's choice)
    assert rouge_l_sentence("the cat sat", ["the cat", "the cat sat on it"]) == pytest.approx(
        2.44 * 1.0 * 1.0 / (1.0 + 1.44 * 1.0))  # P = 3/3 from the second; R = 2/2 from the first
    assert rouge_l(["the cat sat", CAT], [CAT, CAT_REF]) == pytest.approx((2.44 * 0.5 / 1.94 + 5 / 6) / 2)


# ------------------------------------------------------------------------ real captions


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _reference_bleu4(hyps: list[list[str]], refs: list[list[list[str]]]) -> float:
    """The module doc's BLEU-4 without pycocoevalcap's 1e-15 / 1e-9 offsets."""
    matches, guesses, c, r = [0] * 4, [0] * 4, 0, 0
    for h, rs in zip(hyps, refs):
        c += len(h)
        r += min((len(x) for x in rs), key=lambda n: (abs(n - len(h)), n))
        for n in range(1, 5):
            grams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            best = Counter()
            for x in rs:
                best |= Counter(tuple(x[i:i + n]) for i in range(len(x) - n + 1))
            matches[n - 1] += sum(min(k, best[g]) for g, k in grams.items())
            guesses[n - 1] += max(len(h) - n + 1, 0)
    brevity = 1.0 if c >= r else math.exp(1 - r / c)
    return brevity * math.prod(m / g for m, g in zip(matches, guesses)) ** 0.25


def _reference_rouge_l(hyps: list[list[str]], refs: list[list[list[str]]]) -> float:
    """The module doc's ROUGE-L: best P and best R over the references, beta 1.2, mean over sentences."""
    scores = []
    for h, rs in zip(hyps, refs):
        lcs = [_lcs(h, x) for x in rs]
        p, r = max(l / len(h) for l in lcs), max(l / len(x) for l, x in zip(lcs, rs))
        scores.append(0.0 if p == 0 or r == 0 else 2.44 * p * r / (r + 1.44 * p))
    return sum(scores) / len(scores)


def test_scores_follow_the_documented_equations_on_real_captions(reference_dir):
    with open(reference_dir / "pretraining" / "39_MM_Retinal_dataset.csv", newline="", encoding="utf-8") as f:
        captions = [row["caption"] for row in csv.DictReader(f)][:300]
    # neighbouring figures often show the same patient, so their captions share n-grams of every order
    hyps = captions[:-2]
    refs = [[captions[i + 1], captions[i + 2]] for i in range(len(hyps))]
    tok_h, tok_r = [words(h) for h in hyps], [[words(x) for x in rs] for rs in refs]
    assert all(tok_h) and all(all(rs) for rs in tok_r)
    # the scorers split on single spaces, so our tokens must survive the join
    assert all(" ".join(words(t)).split(" ") == words(t) for t in captions)
    expected_bleu = _reference_bleu4(tok_h, tok_r)
    assert 0.05 < expected_bleu < 0.9  # every order matched somewhere: a real comparison, not 0 against 0
    assert corpus_bleu(hyps, refs) == pytest.approx(expected_bleu, rel=1e-6)
    assert rouge_l(hyps, refs) == pytest.approx(_reference_rouge_l(tok_h, tok_r), rel=1e-12)


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
