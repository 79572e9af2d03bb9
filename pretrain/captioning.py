"""Caption generation with KeepFIT V2's decoder, scored with the COCO caption evaluation's BLEU-4 and ROUGE-L.

    ids = greedy_generate(model.caption_decoder, model.image_tokens(pixels), bos_id=cls_id, eos_id=sep_id)
    corpus_bleu(hypotheses, references)     # BLEU-4, corpus level, unsmoothed (pycocoevalcap Bleu)
    rouge_l(hypotheses, references)         # mean sentence ROUGE-L F, beta 1.2 (pycocoevalcap Rouge)
    evaluate_captions(model, tokenizer, "demo-output/shards/elite", split="val")

Both scores are computed by pycocoevalcap (the COCO caption evaluation code that caption papers report),
`pycocoevalcap.bleu.bleu.Bleu` and `pycocoevalcap.rouge.rouge.Rouge`, on our tokens: each text is lower-cased
and split into word and punctuation tokens (`words`), and the tokens are joined by single spaces, which both
scorers split on. COCO's own pipeline first runs the Stanford PTB tokenizer, a Java program that also drops
punctuation; it is not used, so punctuation tokens count here. Each hypothesis has one or more references.

BLEU-N (Papineni et al. 2002), corpus level, as pycocoevalcap's BleuScorer computes it (option "closest"):
clipped n-gram matches m_n (a hypothesis n-gram counts at most as often as in any one reference) and hypothesis
n-gram counts g_n are summed over the corpus, p_n = (m_n + 1e-15) / (g_n + 1e-9), and
BLEU-N = BP * (p_1 ... p_N)^(1/N) with BP = exp(1 - r/c) when c < r, else 1 (c: hypothesis tokens, r: the sum
over sentences of the reference length closest to the hypothesis length, ties to the shorter). There is no
smoothing: an order with no match anywhere in the corpus makes the score about 0 (the 1e-15 keeps it from
being exactly 0), and a corpus without hypothesis tokens scores 0. The constants move a score by about 1e-9
relative, so identical texts score just below 1, not exactly 1.

ROUGE-L (Lin 2004) per sentence from the longest common subsequence l with each reference: P = l / |hyp|,
R = l / |ref|; the best P and the best R over the references are taken separately and
F = (1 + beta^2) P R / (R + beta^2 P) with beta = 1.2, or 0 when either is 0. The corpus score is the mean over
sentences. An empty hypothesis scores 0 against non-empty references.

Generation is greedy (no beam): from `[CLS]`, append the most likely next token until `[SEP]` or max_len
tokens; each step re-runs the decoder on the whole prefix (no key/value cache; evaluation captions are short).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.rouge.rouge import Rouge
from torch import nn

__all__ = ["corpus_bleu", "evaluate_captions", "greedy_generate", "rouge_l", "rouge_l_sentence", "words"]

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: 'Drusen, macula.' -> ['drusen', ',', 'macula', '.']."""
    return _WORD.findall(text.lower())


def _as_references(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def _coco_inputs(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]
                 ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's (gts, res) dicts: id -> space-joined `words` of the references / of the hypothesis."""
    refs = _as_references(references)
    if len(hypotheses) != len(refs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(refs)} reference lists")
    if any(not r for r in refs):
        raise ValueError("every hypothesis needs at least one reference")
    gts = {i: [" ".join(words(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(words(h))] for i, h in enumerate(hypotheses)}
    return gts, res


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-max_n in [0, 1] by pycocoevalcap; see the module doc."""
    gts, res = _coco_inputs(hypotheses, references)
    if not res:
        return 0.0
    scores, _ = Bleu(max_n).compute_score(gts, res, verbose=0)  # verbose=0: no printing
    return float(scores[max_n - 1])


def rouge_l_sentence(hypothesis: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F of one hypothesis against its references by pycocoevalcap; see the module doc."""
    gts, res = _coco_inputs([hypothesis], [references])
    return float(Rouge().calc_score(res[0], gts[0]))


def rouge_l(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean sentence ROUGE-L F over the corpus by pycocoevalcap; see the module doc."""
    gts, res = _coco_inputs(hypotheses, references)
    if not res:
        return 0.0
    mean, _ = Rouge().compute_score(gts, res)
    return float(mean)


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
    scaling = getattr(model.config.vision, "pixel_scaling", "clip")
    for batch in eval_dataset(shard_dir, split, cfg, tokenizer, pixel_scaling=scaling):
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
