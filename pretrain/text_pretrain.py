"""`retina-pretrain text-pretrain`: KeepFIT V2 stage 1, masked-language pretraining of the text tower.

    retina-pretrain text-pretrain --config pretrain/configs/keepfit_v2_text_cpu.yaml [--run.steps 50 ...]
    retina-pretrain text-pretrain --help               # every dotted option with its type, default and help

The ophthalmic corpus (`build_corpus`) is every distinct text of: the captions (`txt`) of the given shard sets'
split (the elite set's expert captions), the clinical description of every knowledge-file category, and the
categorical texts (every prompt template filled with every category, as FLAIR-style training captions read).
It is written to RUN_DIR/corpus.txt, one text per line.

Masking (`mask_tokens`) is BERT's, as transformers' DataCollatorForLanguageModeling does it: each non-special
token is selected with probability mlm.mask_probability (15%); a selected token becomes [MASK] with
probability mlm.mask_replace (80%), a uniformly random vocabulary id with mlm.random_replace (10%), and stays
itself otherwise; the loss is the cross-entropy at the selected positions only (mean over them on each rank).
Our own implementation rather than the collator: one uniform draw decides mask/random/keep, and an explicit
generator seeded by (seed, step, rank) makes every batch reproducible, so a resumed run sees exactly the
batches it would have seen.

Training runs on the DeepSpeed engine like `retina-pretrain train` (ZeRO 0-3, any number of processes,
checkpoints under RUN_DIR/checkpoints, `run.resume: auto`, one training per run folder: pretrain.run_lock);
rank r takes the texts at positions ((step-1)*world + r)*batch_size ... of a seeded permutation per corpus
epoch. At the end the encoder (without the MLM head, which stays in the checkpoints) and the tokenizer are
written as a transformers folder, default RUN_DIR/text_model (an existing OUT is replaced only if it is empty or
a model folder: pretrain.model_folders): stage 2 uses it as `model.text.name_or_path` (with
`model.text.random_init: false`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pretrain.config_checks import check_engine, check_run
from pretrain.engine import EngineConfig
from pretrain.loop import RunConfig
from pretrain.samples import stable_seed
from pretrain.towers import TextConfig

__all__ = ["CorpusConfig", "MLMConfig", "MaskedLM", "TextPretrainConfig", "batch_indices", "build_corpus",
           "build_mlm_model", "mask_tokens", "mlm_loss", "save_text_model", "text_pretrain"]

log = logging.getLogger("pretrain.text_pretrain")
IGNORE = -100


@dataclass
class CorpusConfig:
    shards: list[str] = field(default_factory=list)
    """Shard set folders whose captions (`txt`) enter the corpus, e.g. the elite set."""
    split: str = "train"
    """Split of those shard sets to read (keep held-out captions out of the corpus)."""
    captions: bool = True
    """Include the shard sets' captions."""
    descriptions: bool = True
    """Include the clinical description of every knowledge-file category."""
    prompts: bool = True
    """Include the categorical texts: every prompt template filled with every category."""


@dataclass
class MLMConfig:
    mask_probability: float = 0.15
    """Probability that a non-special token is selected for prediction."""
    mask_replace: float = 0.8
    """Share of the selected tokens replaced by [MASK]."""
    random_replace: float = 0.1
    """Share of the selected tokens replaced by a random vocabulary id (the rest stay unchanged)."""


@dataclass
class TextPretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, length, logging and checkpointing (as in retina-pretrain train)."""
    text: TextConfig = field(default_factory=TextConfig)
    """The text tower to pretrain (name_or_path may be `offline-minilm`); its tokenizer comes from name_or_path."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Where the ophthalmic corpus comes from."""
    mlm: MLMConfig = field(default_factory=MLMConfig)
    """Masking statistics."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed engine and optimizer; engine.micro_batch_size is taken from batch_size."""
    batch_size: int = 32
    """Texts per process per step."""
    out: str | None = None
    """Folder of the pretrained encoder + tokenizer (transformers format), replaced at the end if it is empty or a
    model folder; default RUN_DIR/text_model."""

    def __post_init__(self) -> None:  # refused while parsing, as retina-pretrain train's config is
        check_run(self.run)
        check_engine(self.engine)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# ----------------------------------------------------------------------------- corpus


def _shard_captions(shard_dir: str | Path, split: str) -> Iterable[str]:
    """The `txt` members of one split's shards, in index order; nothing else in the tars is read."""
    from shards.index import shard_urls
    from shards.storage import local_or_url, opened

    urls = shard_urls(local_or_url(shard_dir), split)
    if not urls:
        raise ValueError(f"corpus.shards: {shard_dir} has no shards for split {split!r}")
    for url in urls:
        with opened(url) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:  # a stream: local or s3://
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield handle.read().decode("utf-8", errors="replace")


def build_corpus(cfg: CorpusConfig, kb: Any = None) -> list[str]:
    """Distinct non-empty texts (whitespace-normalised), in a fixed order: captions, descriptions, prompts."""
    if kb is None:
        from shards.knowledge import load_knowledge

        kb = load_knowledge()
    parts: list[Iterable[str]] = []
    if cfg.captions:
        parts += [_shard_captions(d, cfg.split) for d in cfg.shards]
    if cfg.descriptions:
        parts.append(kb.description(name) for name in kb.vocabulary)
    if cfg.prompts:
        parts += [kb.prompts(name) for name in kb.vocabulary]
    seen: dict[str, None] = {}
    for part in parts:
        for text in part:
            text = " ".join(text.split())
            if text:
                seen.setdefault(text, None)
    return list(seen)


# ----------------------------------------------------------------------------- batches and masking


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(seed, epoch))).tolist())


def batch_indices(n: int, step: int, rank: int, world_size: int, batch_size: int, seed: int) -> list[int]:
    """Corpus indices of (step, rank)'s batch (step counts from 1): consecutive slices of one seeded permutation
    per epoch, so the ranks of a step see disjoint texts and every text comes once per epoch."""
    start = ((step - 1) * world_size + rank) * batch_size
    return [_permutation(n, seed, pos // n)[pos % n] for pos in range(start, start + batch_size)]


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, *, mask_token_id: int,
                vocab_size: int, generator: torch.Generator, probability: float = 0.15,
                mask_replace: float = 0.8, random_replace: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (see the module doc) -> (masked input_ids, labels with -100 where nothing is predicted).
    special_tokens_mask: 1 for [CLS]/[SEP]/[PAD] and other tokens never selected."""
    if not (0 <= probability <= 1 and mask_replace >= 0 and random_replace >= 0 and mask_replace + random_replace <= 1):
        raise ValueError("mlm: need 0 <= mask_probability <= 1 and mask_replace + random_replace <= 1")
    eligible = special_tokens_mask == 0
    selected = (torch.rand(input_ids.shape, generator=generator) < probability) & eligible
    labels = input_ids.masked_fill(~selected, IGNORE)
    u = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (u < mask_replace)
    to_random = selected & (u >= mask_replace) & (u < mask_replace + random_replace)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the predicted positions, their accuracy); 0 (with a graph) when none is."""
    flat, targets = logits.flatten(0, 1).float(), labels.flatten()
    count = (targets != IGNORE).sum()
    loss = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum") / count.clamp(min=1)
    keep = targets != IGNORE
    correct = (flat[keep].argmax(-1) == targets[keep]).sum()
    return loss, correct.float() / count.clamp(min=1)


def _make_batch(corpus: Sequence[str], tokenizer: Any, cfg: TextPretrainConfig, step: int, rank: int,
                world_size: int) -> dict[str, torch.Tensor]:
    texts = [corpus[i] for i in batch_indices(len(corpus), step, rank, world_size, cfg.batch_size, cfg.run.seed)]
    tokens = tokenizer(texts, padding="longest", truncation=True, max_length=cfg.text.max_len,
                       return_special_tokens_mask=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(stable_seed(cfg.run.seed, "mask", step, rank))
    input_ids, labels = mask_tokens(tokens["input_ids"], tokens["special_tokens_mask"],
                                    mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                    generator=generator, probability=cfg.mlm.mask_probability,
                                    mask_replace=cfg.mlm.mask_replace, random_replace=cfg.mlm.random_replace)
    return {"input_ids": input_ids, "attention_mask": tokens["attention_mask"], "labels": labels}


# ----------------------------------------------------------------------------- model and output


def build_mlm_model(cfg: TextConfig) -> torch.nn.Module:
    """A transformers masked-LM model for the text tower config (same config rules as pretrain.model)."""
    from transformers import AutoModelForMaskedLM

    from pretrain.towers import load_text_model

    return MaskedLM(load_text_model(cfg, AutoModelForMaskedLM))


class MaskedLM(torch.nn.Module):
    """A transformers masked-LM model whose forward returns (loss, accuracy) and runs the vocabulary head on the
    selected positions only: with a 30k vocabulary the head over every token would dominate a small encoder's
    step. The whole step is one forward of this module, so ZeRO-3 gathers every parameter through its hooks."""

    def __init__(self, mlm: torch.nn.Module) -> None:
        super().__init__()
        self.mlm = mlm
        # BERT-family heads; other architectures fall back to the model's own full-sequence logits
        self.head_name = next((n for n in ("cls", "lm_head") if isinstance(getattr(mlm, n, None), torch.nn.Module)),
                              None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head_name is None:
            return mlm_loss(self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
        hidden = self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = labels != IGNORE  # none selected: an empty head input, loss 0 and zero gradients everywhere
        logits = getattr(self.mlm, self.head_name)(hidden[keep])
        return mlm_loss(logits[None], labels[keep][None])


def save_text_model(model: torch.nn.Module, tokenizer: Any, out: str | Path) -> Path:
    """Write the encoder (MLM head dropped) and tokenizer as a transformers folder; call on ALL ranks
    (ZeRO-3 gathers every parameter first). Replaces OUT atomically: an empty or model folder only
    (pretrain.model_folders.NotReplaceable otherwise, on every rank alike)."""
    from pretrain.engine import gathered_parameters
    from pretrain.loop import rank_world
    from pretrain.model_folders import check_replaceable
    from shards.atomic import replace_folder

    check_replaceable(out)
    module = model.mlm
    with gathered_parameters(list(module.parameters())):
        if rank_world()[0] == 0:
            def fill(tmp: Path) -> None:
                encoder = module.base_model
                encoder.config.architectures = [type(encoder).__name__]
                encoder.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)

            replace_folder(out, fill, overwrite=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return Path(out)


# ----------------------------------------------------------------------------- training


def text_pretrain(cfg: TextPretrainConfig) -> dict[str, Any]:
    """Run (or resume) stage 1; returns the loop's summary plus "out" (the encoder folder) and "corpus".
    pretrain.run_lock.RunLocked, before anything is built, if another training holds the run folder."""
    from pretrain.run_lock import hold_run_lock

    with hold_run_lock(cfg.run.dir):
        return _text_pretrain_locked(cfg)


def _text_pretrain_locked(cfg: TextPretrainConfig) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from pretrain.checkpoint import save_run_config
    from pretrain.engine import build_engine, init_distributed_env
    from pretrain.loop import TrainingLoop, rank_world, seed_everything
    from pretrain.model_folders import check_replaceable
    from pretrain.towers import resolve_text_path
    from pretrain.train import scheduled_engine_config

    run_dir = Path(cfg.run.dir)
    out = Path(cfg.out) if cfg.out else run_dir / "text_model"
    check_replaceable(out)  # before training, not after: the end replaces OUT
    init_distributed_env()
    rank, world = rank_world()
    text_cfg = dataclasses.replace(cfg.text, name_or_path=resolve_text_path(cfg.text.name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(text_cfg.name_or_path)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{text_cfg.name_or_path}: the tokenizer has no mask token")
    corpus = build_corpus(cfg.corpus)
    if not corpus:
        raise ValueError("the corpus is empty: give corpus.shards or enable descriptions/prompts")
    seed_everything(cfg.run.seed)  # the same initial weights on every rank
    model = build_mlm_model(text_cfg)
    engine, optimizer, _ = build_engine(model, scheduled_engine_config(cfg.engine, cfg.run.steps, cfg.batch_size))
    seed_everything(cfg.run.seed + rank)  # then rank-specific dropout
    loop = TrainingLoop(engine, optimizer, cfg.run)
    save_run_config(run_dir, cfg)  # only once the checkpoint being resumed has loaded into this config
    if rank == 0:
        (run_dir / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    loop.say(f"{'resumed from step ' + str(loop.start_step) if loop.resumed else 'starting fresh'} | text-pretrain "
             f"(MLM) | corpus {len(corpus)} texts | params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M | "
             f"world {world} | run {run_dir}")

    def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss, accuracy = module(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return {"loss": loss, "mlm": loss.detach(), "mlm_accuracy": accuracy}

    summary = loop.run(lambda step: _make_batch(corpus, tokenizer, cfg, step, rank, world), loss_fn)
    out = save_text_model(model, tokenizer, out)
    loop.say(f"done at step {summary['step']} | text model for stage 2 (model.text.name_or_path): {out}")
    return {**summary, "out": str(out), "corpus": len(corpus)}
