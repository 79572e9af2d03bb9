"""Training and evaluation data: webdataset pipelines over the shard sets built by `shards`.

Modelled on open_clip's webdataset pipeline (shard list -> tar samples -> shuffle -> decode -> batch),
with three retinal specifics:

- decoding is by hand and allow-listed: only `jpg`/`png`/`txt`/`json` members are ever read, images go
  through PIL and json through `json.loads`, so nothing in a shard can be unpickled or executed;
- a sample that does not decode is skipped and counted in `SKIPPED` (one counter per process, so one per
  DataLoader worker) with its key and reason logged at WARNING: one bad file never kills a week-long run,
  and never disappears silently either;
- categorical samples (empty caption) get a FLAIR-style caption sampled from the knowledge base, so the
  text tower always sees a sentence.

Every random choice (shard resampling, shuffle buffer, caption and prompt sampling, augmentation) is
seeded from (seed, step, rank, worker, stream), so a resumed run can reseed by step and the same
seed and step give the same first batch with `workers=0`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from pretrain.samples import (ALLOWED_EXTS, CLIP_MEAN, CLIP_STD, IMAGE_EXTS, SKIPPED, SkipCounter, decode_sample,
                              eval_transform, keep_member, stable_seed, train_transform)
from shards.index import load_index, shard_urls
from shards.knowledge import load_knowledge
from shards.printable import error_text

log = logging.getLogger(__name__)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DataConfig",
    "IMAGE_EXTS",
    "ALLOWED_EXTS",
    "decode_sample",
    "SKIPPED",
    "SkipCounter",
    "eval_dataset",
    "eval_transform",
    "keep_member",
    "make_loader",
    "make_stream",
    "stable_seed",
    "train_transform",
]

@dataclass
class DataConfig:
    public: str | None = None
    """Folder of the public (categorical + captioned) shard set; None to train on elite only."""
    elite: str | None = None
    """Folder of the elite (expert-captioned, e.g. MM-Retinal) shard set; None to train on public only."""
    split: str = "train"
    """Split of both shard sets to train on."""
    mix: Literal["ratio", "paired"] = "ratio"
    """ratio: one stream of batches whose samples come from elite with probability `elite_fraction`;
    paired: every step yields a (public batch, elite batch) pair, as KeepFIT V1's knowledge distillation needs."""
    elite_fraction: float = 0.25
    """ratio mix: probability that a sample is drawn from the elite set."""
    batch_size: int = 32
    """Samples per batch per rank (the public batch in paired mode)."""
    elite_batch_size: int = 8
    """paired mix: samples per elite batch per rank (unused in ratio mode)."""
    image_size: int = 224
    """Side of the square images fed to the model."""
    max_text_len: int = 77
    """Tokens per caption: longer captions are truncated, shorter ones padded."""
    shuffle_buffer: int = 1000
    """Samples held in each stream's shuffle buffer (0 disables sample shuffling)."""
    workers: int = 2
    """DataLoader worker processes per rank (0 decodes in the training process)."""
    augment: bool = True
    """Random fundus augmentation (crop, flip, rotation, colour jitter) for training."""
    seed: int = 0
    """Base seed of shard sampling, shuffling, caption sampling and augmentation."""

    def validate(self) -> None:
        if self.public is None and self.elite is None:
            raise ValueError("data: set data.public and/or data.elite")
        if self.mix == "paired" and (self.public is None or self.elite is None):
            raise ValueError("data.mix=paired needs both data.public and data.elite")
        if not 0.0 <= self.elite_fraction <= 1.0:
            raise ValueError("data.elite_fraction must be in [0, 1]")
        if min(self.batch_size, self.elite_batch_size, self.image_size, self.max_text_len) < 1:
            raise ValueError("data: batch sizes, image_size and max_text_len must be positive")


def _log_and_continue(exn: Exception) -> bool:
    """webdataset handler for shard-level failures (unreadable tar): count, log, keep streaming."""
    SKIPPED.add("<shard>", f"shard error: {error_text(exn)}")
    return True


# ----------------------------------------------------------------------------- seeding


def _worker_id() -> int:
    info = get_worker_info()
    return 0 if info is None else info.id


# ----------------------------------------------------------------------------- pipeline stages


def _split_by_rank(src: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """Node splitting with an explicit rank (webdataset's split_by_node reads torch.distributed)."""
    for i, item in enumerate(src):
        if i % world_size == rank:
            yield item


def _shuffle(src: Iterable[dict], bufsize: int, seed: int) -> Iterator[dict]:
    """Buffer shuffle like wds.shuffle, but seeded per worker at iteration time (inside the worker)."""
    rng = random.Random(stable_seed(seed, _worker_id()))
    buf: list[dict] = []
    for item in src:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(bufsize)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def _decode(src: Iterable[dict], seed: int, **kwargs: Any) -> Iterator[dict]:
    rng = random.Random(stable_seed(seed, _worker_id()))
    for sample in src:
        out = decode_sample(sample, rng=rng, **kwargs)
        if out is not None:
            yield out


def _mix(public: Iterable[dict], elite: Iterable[dict], elite_fraction: float, seed: int) -> Iterator[dict]:
    """Sample-level mixing: each sample is elite with probability elite_fraction; stops with either stream."""
    rng = random.Random(stable_seed(seed, _worker_id(), "mix"))
    streams = iter(public), iter(elite)
    while True:
        try:
            yield next(streams[rng.random() < elite_fraction])
        except StopIteration:
            return


def _pairs(public: Iterable[dict], elite: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    yield from zip(public, elite)


def _rank_worker_seed(rank: int) -> int:
    return stable_seed(rank, _worker_id())


class Collate:
    """List of decoded samples -> dict batch; tokenises the whole batch in one fast-tokenizer call."""

    def __init__(self, tokenizer: Any, max_text_len: int, num_labels: int):
        self.tokenizer, self.max_text_len, self.num_labels = tokenizer, max_text_len, num_labels

    def __call__(self, samples: list[dict]) -> dict:
        texts = [s["text"] for s in samples]
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_text_len,
                                return_tensors="pt")
        multi_hot = torch.zeros(len(samples), self.num_labels, dtype=torch.uint8)
        for row, s in enumerate(samples):
            multi_hot[row, s["labels"]] = 1
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "category_ids": torch.tensor([s["category_id"] for s in samples], dtype=torch.long),
            "multi_hot": multi_hot,
            "text": texts,
            "keys": [s["key"] for s in samples],
            "dataset": [s["dataset"] for s in samples],
            # (worker, samples this worker process has skipped so far): the trainer keeps the latest count of
            # each worker and sums them over workers and ranks, since SKIPPED lives in the worker's process.
            "data_skipped": (_worker_id(), SKIPPED.total),
        }


# ----------------------------------------------------------------------------- pipelines


def _vocabulary(shard_dir: str | Path) -> list[str]:
    return list(load_index(Path(shard_dir))["label_vocabulary"])


def _samples(shard_dir: str | Path, split: str, cfg: DataConfig, *, rank: int, world_size: int,
             resampled: bool, seed: int, augment: bool, shuffle: bool) -> wds.DataPipeline:
    """Decoded (unbatched) samples of one shard set for this rank; each worker reads its own shards."""
    urls = shard_urls(Path(shard_dir), split)
    if not urls:
        raise ValueError(f"{shard_dir}: no shards for split {split!r}")
    if resampled:
        # Sampling with replacement gives every rank and worker an infinite stream of its own (the seed
        # includes both), so no rank ever runs dry and shard counts need not divide evenly.
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed, deterministic=True,
                                                 worker_seed=partial(_rank_worker_seed, rank))]
    else:
        stages = [wds.SimpleShardList(urls), partial(_split_by_rank, rank=rank, world_size=world_size),
                  wds.split_by_worker]
    stages.append(wds.tarfile_to_samples(handler=_log_and_continue, select_files=keep_member))
    if shuffle and cfg.shuffle_buffer > 0:
        stages.append(partial(_shuffle, bufsize=cfg.shuffle_buffer, seed=stable_seed(seed, rank, "shuffle")))
    vocab = _vocabulary(shard_dir)
    transform = train_transform(cfg.image_size) if augment else eval_transform(cfg.image_size)
    stages.append(partial(_decode, seed=stable_seed(seed, rank, "decode"), kb=load_knowledge(),
                          vocab_ids={name: i for i, name in enumerate(vocab)}, transform=transform))
    return wds.DataPipeline(*stages)


def make_stream(shard_dir: str | Path, cfg: DataConfig, tokenizer: Any, *, batch_size: int, rank: int = 0,
                world_size: int = 1, resampled: bool = True, epoch_seed: int = 0) -> wds.DataPipeline:
    """Dict batches from one shard set: infinite and seeded by `epoch_seed` when resampled, else one pass."""
    seed = stable_seed(cfg.seed, epoch_seed, Path(shard_dir).name)
    samples = _samples(shard_dir, cfg.split, cfg, rank=rank, world_size=world_size, resampled=resampled,
                       seed=seed, augment=cfg.augment, shuffle=True)
    collate = Collate(tokenizer, cfg.max_text_len, len(_vocabulary(shard_dir)))
    return wds.DataPipeline(samples, wds.batched(batch_size, collation_fn=collate, partial=not resampled))


def make_loader(cfg: DataConfig, tokenizer: Any, rank: int = 0, world_size: int = 1, step: int = 0) -> wds.WebLoader:
    """Training loader for one rank: a dict batch per step (ratio) or a (public, elite) pair (paired).

    `step` reseeds every random choice, so a run resumed at step N does not replay the batches of step 0.
    """
    cfg.validate()

    def stream(shard_dir: str, batch_size: int) -> wds.DataPipeline:
        return make_stream(shard_dir, cfg, tokenizer, batch_size=batch_size, rank=rank, world_size=world_size,
                           epoch_seed=step)

    if cfg.mix == "paired":
        assert cfg.public is not None and cfg.elite is not None
        pipeline = wds.DataPipeline(partial(_pairs, stream(cfg.public, cfg.batch_size),
                                            stream(cfg.elite, cfg.elite_batch_size)))
    elif cfg.public is None or cfg.elite is None:
        pipeline = stream(cfg.public or cfg.elite, cfg.batch_size)  # type: ignore[arg-type]
    else:
        if _vocabulary(cfg.public) != _vocabulary(cfg.elite):
            raise ValueError("data.public and data.elite have different label vocabularies; rebuild them together")
        seed = stable_seed(cfg.seed, step)
        kwargs = {"rank": rank, "world_size": world_size, "resampled": True, "augment": cfg.augment,
                  "shuffle": True}
        public = _samples(cfg.public, cfg.split, cfg, seed=stable_seed(seed, "public"), **kwargs)
        elite = _samples(cfg.elite, cfg.split, cfg, seed=stable_seed(seed, "elite"), **kwargs)
        collate = Collate(tokenizer, cfg.max_text_len, len(_vocabulary(cfg.public)))
        pipeline = wds.DataPipeline(partial(_mix, public, elite, cfg.elite_fraction, stable_seed(seed, rank)),
                                    wds.batched(cfg.batch_size, collation_fn=collate, partial=False))
    # Batching happens inside the pipeline (per worker), so the loader itself must not batch again.
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=cfg.workers,
                         persistent_workers=cfg.workers > 0)


def eval_dataset(shard_dir: str | Path, split: str, cfg: DataConfig, tokenizer: Any) -> wds.DataPipeline:
    """Every sample of one split once, in shard order, unaugmented, in batches of cfg.batch_size.

    Categorical samples still get a sampled prompt as caption, from a fixed seed, so runs compare equal.
    Iterate it directly (single process) or through a DataLoader with batch_size=None.
    """
    samples = _samples(shard_dir, split, cfg, rank=0, world_size=1, resampled=False,
                       seed=stable_seed(cfg.seed, "eval"), augment=False, shuffle=False)
    collate = Collate(tokenizer, cfg.max_text_len, len(_vocabulary(shard_dir)))
    return wds.DataPipeline(samples, wds.batched(cfg.batch_size, collation_fn=collate, partial=True))
