"""Caption generation with KeepFIT V2's decoder, and the two caption metrics, in plain Python.

    ids = greedy_generate(model.caption_decoder, model.image_tokens(pixels), bos_id=cls_id, eos_id=sep_id)
    corpus_bleu(hypotheses, references)     # BLEU-4, corpus level, smoothed
    rouge_l(hypotheses, references)         # mean sentence ROUGE-L F (beta 1.2)
    evaluate_captions(model, tokenizer, "demo-output/shards/elite", split="val")

Texts are compared as lower-cased word and punctuation tokens (`words`). Each hypothesis has a list of one or
more references.

BLEU-4 (Papineni et al. 2002) at corpus level: clipped n-gram matches and n-gram counts are summed over the
corpus for n = 1..4, p_n = matches_n / counts_n, BLEU = BP * exp(mean_n log p_n), with the brevity penalty
BP = exp(1 - r/c) when c <= r (c: hypothesis words, r: for each sentence the reference length closest to the
hypothesis', ties to the shorter, summed). Smoothing: Chen & Cherry's (2014) method 1 (nltk's
SmoothingFunction().method1): an order with no match gets p_n = epsilon / counts_n (epsilon = 0.1; when
no hypothesis is n words long, counts_n counts as 1). It leaves the standard score untouched whenever every
order has a match, which a corpus of real captions almost always has, and keeps a tiny held-out set from
scoring exactly 0. No hypothesis words at all scores 0.

ROUGE-L (Lin 2004) per sentence from the longest common subsequence l: P = l / |hyp|, R = l / |ref| and
F = (1 + beta^2) P R / (R + beta^2 P) with beta = 1.2, as the COCO caption evaluation (pycocoevalcap) computes
it; with several references the best P and the best R are taken separately (as there). The corpus score is the
mean over sentences.

Generation is greedy (no beam): from `[CLS]`, append the most likely next token until `[SEP]` or max_len
tokens; each step re-runs the decoder on the whole prefix (no key/value cache; evaluation captions are short).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["bleu_stats", "corpus_bleu", "evaluate_captions", "greedy_generate", "lcs_length", "rouge_l",
           "rouge_l_sentence", "words"]

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: 'Drusen, macula.' -> ['drusen', ',', 'macula', '.']."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _as_references(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def bleu_stats(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]],
               max_n: int = 4) -> dict[str, Any]:
    """Corpus sums: matches[n-1], counts[n-1] (clipped n-gram matches, hypothesis n-grams), hyp_len, ref_len."""
    refs = _as_references(references)
    if len(hypotheses) != len(refs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(refs)} reference lists")
    matches, counts = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref_texts in zip(hypotheses, refs):
        h = words(hyp)
        rs = [words(r) for r in ref_texts]
        if not rs:
            raise ValueError("every hypothesis needs at least one reference")
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda n: (abs(n - len(h)), n))  # closest, ties to shorter
        for n in range(1, max_n + 1):
            hyp_grams = _ngrams(h, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)  # | keeps the max count per n-gram over the references
            matches[n - 1] += sum(min(c, best[g]) for g, c in hyp_grams.items())
            counts[n - 1] += max(len(h) - n + 1, 0)
    return {"matches": matches, "counts": counts, "hyp_len": hyp_len, "ref_len": ref_len}


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], max_n: int = 4,
                epsilon: float = 0.1) -> float:
    """Smoothed corpus BLEU-max_n in [0, 1]; see the module doc."""
    s = bleu_stats(hypotheses, references, max_n)
    c, r = s["hyp_len"], s["ref_len"]
    if c == 0:
        return 0.0
    log_p = 0.0
    for m, n in zip(s["matches"], s["counts"]):
        log_p += math.log(m / n if m > 0 else epsilon / max(n, 1))
    brevity = 1.0 if c > r else math.exp(1.0 - r / c)
    return brevity * math.exp(log_p / max_n)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_sentence(hypothesis: str, references: str | Sequence[str], beta: float = 1.2) -> float:
    h = words(hypothesis)
    refs = [words(r) for r in ([references] if isinstance(references, str) else references)]
    if not h or not any(refs):
        return 0.0
    lcs = [lcs_length(h, r) for r in refs]
    precision = max(l / len(h) for l in lcs)
    recall = max(l / len(r) for l, r in zip(lcs, refs) if r)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], beta: float = 1.2) -> float:
    """Mean sentence ROUGE-L F over the corpus; see the module doc."""
    refs = _as_references(references)
    if len(hypotheses) != len(refs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(refs)} reference lists")
    if not refs:
        return 0.0
    return sum(rouge_l_sentence(h, r, beta) for h, r in zip(hypotheses, refs)) / len(refs)


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def greedy_generate(decoder: nn.Module, image_tokens: torch.Tensor, *, bos_id: int, eos_id: int,
                    max_len: int | None = None, image_padding_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Greedy captions for (B, T, C) image tokens: token ids after bos, up to (not including) eos; at most
    max_len - 1 of them (max_len counts bos, as the decoder's max_len does; default: the decoder's)."""
    max_len = min(max_len or decoder.max_len, decoder.max_len)
    batch = image_tokens.shape[0]
    ids = torch.full((batch, 1), bos_id, dtype=torch.long, device=image_tokens.device)
    done = torch.zeros(batch, dtype=torch.bool, device=image_tokens.device)
    for _ in range(max_len - 1):
        logits = decoder(ids, image_tokens, image_padding_mask=image_padding_mask)[:, -1]
        step = logits.argmax(dim=-1).masked_fill(done, eos_id)
        ids = torch.cat([ids, step[:, None]], dim=1)
        done |= step == eos_id
        if bool(done.all()):
            break
    out = []
    for row in ids[:, 1:].tolist():
        out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out


@torch.no_grad()
def evaluate_captions(model: Any, tokenizer: Any, shard_dir: str | Path, split: str = "val", batch_size: int = 32,
                      max_len: int | None = None, examples: int = 5) -> dict[str, Any]:
    """BLEU-4 and ROUGE-L of greedy captions against the real captions of one split of a captioned shard set
    (samples without a caption are left out). `model` is a RetinaCLIP with a caption_decoder (KeepFIT V2)."""
    from pretrain.data import DataConfig, eval_dataset
    from pretrain.eval_inputs import EvalInputError, shard_metadata

    decoder = getattr(model, "caption_decoder", None)
    if decoder is None:
        raise EvalInputError("the model has no caption decoder (only KeepFIT V2 runs have one)")
    model.eval()
    meta = shard_metadata(shard_dir, split)
    cfg = DataConfig(batch_size=batch_size, image_size=model.config.vision.image_size,
                     max_text_len=model.config.text.max_len, workers=0)
    device = next(model.parameters()).device
    bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    hypotheses: list[str] = []
    references: list[str] = []
    keys: list[str] = []
    for batch in eval_dataset(shard_dir, split, cfg, tokenizer):
        rows = [i for i, key in enumerate(batch["keys"]) if meta[key]["has_caption"]]
        if not rows:
            continue
        tokens = model.image_tokens(batch["image"][rows].to(device))
        for row, ids in zip(rows, greedy_generate(decoder, tokens, bos_id=bos, eos_id=eos, max_len=max_len)):
            hypotheses.append(tokenizer.decode(ids, skip_special_tokens=True))
            references.append(batch["text"][row])
            keys.append(batch["keys"][row])
    if not hypotheses:
        raise EvalInputError(f"{shard_dir}: split {split!r} has no captioned samples")
    return {"shards": str(shard_dir), "split": split, "n": len(hypotheses),
            "bleu4": corpus_bleu(hypotheses, references), "rouge_l": rouge_l(hypotheses, references),
            "examples": [{"key": k, "reference": r, "generated": h}
                         for k, r, h in list(zip(keys, references, hypotheses))[:examples]]}
