"""Training and evaluation data: webdataset pipelines over the shard sets built by `shards`.

Modelled on open_clip's webdataset pipeline (shard list -> tar samples -> shuffle -> decode -> batch),
with three retinal specifics:

- decoding is by hand and allow-listed: only `jpg`/`png`/`txt`/`json` members are ever read, images go
  through PIL and json through `json.loads`, so nothing in a shard can be unpickled or executed;
- nothing is lost silently (pretrain.data_loss): at start each shard's size (with `verify_sha256`, also its
  sha256) is checked against index.json and a damaged shard is left out; a tar that ends early and a sample
  that does not decode are counted per shard and logged with their names; every batch carries the worker's
  account, and the trainer stops the run once the samples lost exceed `max_lost_fraction`. One bad file never
  kills a week-long run, and never disappears silently either;
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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from pretrain.caption_padding import TEXT_PADDINGS, text_padding, tokenize_captions
from pretrain.data_loss import LOSSES, DataLossError, check_shards, describe_losses, lost_fraction, merge, read_shards
from pretrain.flair_data import balance_by_dataset, flair_caption, load_flair_definitions, without_held_out
from pretrain.samples import (ALLOWED_EXTS, CLIP_MEAN, CLIP_STD, IMAGE_EXTS, SKIPPED, SkipCounter, decode_sample,
                              eval_transform, flair_train_transform, keep_member, stable_seed, train_transform)
from shards.index import load_index
from shards.knowledge import load_knowledge
from shards.storage import local_or_url

log = logging.getLogger(__name__)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Collate",
    "DataConfig",
    "DataLossError",
    "LOSSES",
    "IMAGE_EXTS",
    "ALLOWED_EXTS",
    "decode_sample",
    "SKIPPED",
    "SkipCounter",
    "check_training_data",
    "eval_dataset",
    "eval_transform",
    "keep_member",
    "make_loader",
    "make_stream",
    "text_padding",
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
    elite_batch_size: int | None = 8
    """paired mix: samples per elite batch per rank (unused in ratio mode); null: the same as batch_size, the 1:1
    public:expert batches of KeepFIT's release (24 + 24 per GPU)."""
    image_size: int = 224
    """Side of the square images fed to the model."""
    max_text_len: int = 77
    """Tokens per caption: longer captions are truncated, shorter ones padded."""
    shuffle_buffer: int = 1000
    """Samples held in each stream's shuffle buffer (0 disables sample shuffling)."""
    workers: int = 2
    """DataLoader worker processes per rank (0 decodes in the training process)."""
    augment: bool = True
    """Random augmentation for training: our fundus augmentation (crop, flip, rotation, colour jitter), or
    FLAIR's (flip, affine, colour jitter at FLAIR's probabilities) with style flair."""
    augment_elite: bool = True
    """With augment on, augment the elite samples too; false: elite samples get the evaluation transform in
    training, as KeepFIT's release (MM-Retinal KeepFITModel.train_epoch_with_KD_loss_Atte_s augments the public
    batch only)."""
    style: Literal["ours", "flair"] = "ours"
    """ours: our augmentation and prompt templates; flair: FLAIR's augmentation and caption (one template, and the
    category swapped for one of its expert definitions), pretrain.flair_data. Pixel scaling is the image
    tower's (model.vision.pixel_scaling; FLAIR's is unit)."""
    flair_definitions: str | None = None
    """style flair: FLAIR's flair/modeling/dictionary.py (read, never run) or a JSON/YAML {category: [phrases]}
    file, for the definition swap; null: no swap."""
    hold_out: list[str] = field(default_factory=list)
    """Leave out every sample with a category containing one of these words, to test them as unseen categories
    (FLAIR holds out [myopia, cataract, macular hole, retinitis pigmentosa, myopic, myope, myop, retinitis])."""
    balance_datasets: bool = False
    """Datasets take turns in each stream, each turn a random sample of that dataset (FLAIR's UniformDataset),
    drawn from a buffer of shuffle_buffer samples per dataset."""
    seed: int = 0
    """Base seed of shard sampling, shuffling, caption sampling and augmentation."""
    verify_sha256: bool = False
    """At start, hash every shard and leave out any whose sha256 differs from index.json (sizes are always
    checked; hashes are read in full once per process, so this costs a pass over the data)."""
    max_lost_fraction: float = 0.01
    """Stop the run once the samples lost (shards left out at start, tars that end early, samples that do not
    decode) exceed this fraction of the samples of the split; 1.0 never stops (every loss is still counted)."""

    @property
    def elite_batch(self) -> int:
        """Samples per elite batch per rank, elite_batch_size resolved."""
        return self.batch_size if self.elite_batch_size is None else self.elite_batch_size

    def validate(self) -> None:
        if self.public is None and self.elite is None:
            raise ValueError("data: set data.public and/or data.elite")
        if self.mix == "paired" and (self.public is None or self.elite is None):
            raise ValueError("data.mix=paired needs both data.public and data.elite")
        if not 0.0 <= self.elite_fraction <= 1.0:
            raise ValueError("data.elite_fraction must be in [0, 1]")
        if not 0.0 <= self.max_lost_fraction <= 1.0:
            raise ValueError("data.max_lost_fraction must be in [0, 1]")
        if min(self.batch_size, self.elite_batch, self.image_size, self.max_text_len) < 1:
            raise ValueError("data: batch sizes, image_size and max_text_len must be positive")
        if self.flair_definitions is not None and not Path(self.flair_definitions).is_file():
            raise ValueError(f"data.flair_definitions: {self.flair_definitions} is not a file")


def check_training_data(cfg: DataConfig) -> None:
    """Check the shards of the split against index.json before anything is built; raise DataLossError when the
    shards left out already lose more than data.max_lost_fraction (pretrain.data_loss)."""
    checks = [check_shards(d, cfg.split, cfg.verify_sha256) for d in (cfg.public, cfg.elite) if d is not None]
    snapshot = {"totals": {c.shard_set: c.total for c in checks},
                "shards": {shard: [n, why] for c in checks for shard, (n, why) in c.left_out.items()}}
    lost, total = lost_fraction(snapshot)
    if lost > cfg.max_lost_fraction * total:
        raise DataLossError(f"data: {describe_losses(merge([snapshot]))}; data.max_lost_fraction is "
                            f"{cfg.max_lost_fraction} (run `retina-shards verify DIR` to see every damaged shard)")


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
    """List of decoded samples -> dict batch; tokenises the whole batch in one fast-tokenizer call.

    padding: max_length (every batch max_text_len tokens), longest (the batch's longest caption, FLAIR's), or
    dynamic (longest rounded up to PAD_MULTIPLE, capped at max_text_len); text_padding says which fits a pooling.
    """

    def __init__(self, tokenizer: Any, max_text_len: int, num_labels: int, padding: str = "max_length"):
        if padding not in TEXT_PADDINGS:
            raise ValueError(f"padding must be one of {TEXT_PADDINGS}, got {padding!r}")
        self.tokenizer, self.max_text_len, self.num_labels = tokenizer, max_text_len, num_labels
        self.padding = padding

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenize_captions(self.tokenizer, texts, self.max_text_len, self.padding)

    def __call__(self, samples: list[dict]) -> dict:
        texts = [s["text"] for s in samples]
        tokens = self.tokenize(texts)
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
            # (worker, this worker's account of lost samples): the trainer keeps each worker's latest and merges
            # them over workers and ranks (pretrain.data_loss), since the ledger lives in the worker's process.
            "data_loss": (_worker_id(), LOSSES.snapshot()),
        }


# ----------------------------------------------------------------------------- pipelines


def _vocabulary(shard_dir: str | Path) -> list[str]:
    return list(load_index(local_or_url(shard_dir))["label_vocabulary"])


def _transform(cfg: DataConfig, augment: bool, scaling: str, crop_foreground: bool = False) -> Callable:
    if not augment:
        return eval_transform(cfg.image_size, scaling, crop_foreground)
    if cfg.style == "flair":
        return flair_train_transform(cfg.image_size, scaling)
    return train_transform(cfg.image_size, scaling)


def _captioner(cfg: DataConfig) -> Callable | None:
    """style flair: FLAIR's caption of a categorical sample (None: our templates)."""
    if cfg.style != "flair":
        return None
    if cfg.flair_definitions is None:
        log.warning("data.style flair without data.flair_definitions: captions keep the category name (FLAIR swaps "
                    "it for an expert definition; point data.flair_definitions at FLAIR's flair/modeling/dictionary.py)")
        return partial(flair_caption, definitions=None)
    return partial(flair_caption, definitions=load_flair_definitions(cfg.flair_definitions))


def _samples(shard_dir: str | Path, split: str, cfg: DataConfig, *, rank: int, world_size: int,
             resampled: bool, seed: int, augment: bool, shuffle: bool, scaling: str,
             crop_foreground: bool = False) -> wds.DataPipeline:
    """Decoded (unbatched) samples of one shard set for this rank; each worker reads its own shards."""
    check = check_shards(shard_dir, split, cfg.verify_sha256)
    urls = list(check.urls)
    if not urls:
        raise DataLossError(f"{shard_dir}: every shard of split {split!r} is damaged or missing "
                            f"(run `retina-shards verify {shard_dir}`)")
    if resampled:
        # Sampling with replacement gives every rank and worker an infinite stream of its own (the seed
        # includes both), so no rank ever runs dry and shard counts need not divide evenly.
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed, deterministic=True,
                                                 worker_seed=partial(_rank_worker_seed, rank))]
    else:
        stages = [wds.SimpleShardList(urls), partial(_split_by_rank, rank=rank, world_size=world_size),
                  wds.split_by_worker]
    stages.append(partial(read_shards, check=check, select_files=keep_member))
    if shuffle and cfg.shuffle_buffer > 0:
        stages.append(partial(_shuffle, bufsize=cfg.shuffle_buffer, seed=stable_seed(seed, rank, "shuffle")))
    vocab = _vocabulary(shard_dir)
    if cfg.hold_out:
        stages.append(partial(without_held_out, words=tuple(cfg.hold_out)))
    if cfg.balance_datasets and resampled:
        stages.append(partial(balance_by_dataset, bufsize=max(cfg.shuffle_buffer, 1),
                              seed=stable_seed(seed, rank, "balance")))
    stages.append(partial(_decode, seed=stable_seed(seed, rank, "decode"), kb=load_knowledge(),
                          caption=_captioner(cfg), transform=_transform(cfg, augment, scaling, crop_foreground),
                          vocab_ids={name: i for i, name in enumerate(vocab)}))
    return wds.DataPipeline(*stages)


def make_stream(shard_dir: str | Path, cfg: DataConfig, tokenizer: Any, *, batch_size: int, rank: int = 0,
                world_size: int = 1, resampled: bool = True, epoch_seed: int = 0,
                pixel_scaling: str = "clip", augment: bool | None = None,
                text_pooling: str | None = None) -> wds.DataPipeline:
    """Dict batches from one shard set: infinite and seeded by `epoch_seed` when resampled, else one pass.
    `augment`: None = cfg.augment; `text_pooling`: the text tower's, which decides the padding (text_padding)."""
    seed = stable_seed(cfg.seed, epoch_seed, Path(shard_dir).name)
    samples = _samples(shard_dir, cfg.split, cfg, rank=rank, world_size=world_size, resampled=resampled,
                       seed=seed, augment=cfg.augment if augment is None else augment, shuffle=True,
                       scaling=pixel_scaling)
    collate = Collate(tokenizer, cfg.max_text_len, len(_vocabulary(shard_dir)), text_padding(cfg.style, text_pooling))
    return wds.DataPipeline(samples, wds.batched(batch_size, collation_fn=collate, partial=not resampled))


def make_loader(cfg: DataConfig, tokenizer: Any, rank: int = 0, world_size: int = 1, step: int = 0,
                pixel_scaling: str = "clip", text_pooling: str | None = None) -> wds.WebLoader:
    """Training loader for one rank: a dict batch per step (ratio) or a (public, elite) pair (paired).

    `step` reseeds every random choice, so a run resumed at step N does not replay the batches of step 0;
    `pixel_scaling` is the image tower's (model.vision.pixel_scaling); `text_pooling` the text tower's
    (model.text.pooling): cls and flair_masked get dynamically padded captions, flair (and None) the padding
    its pooling reads (text_padding).
    """
    cfg.validate()

    elite_augment = cfg.augment and cfg.augment_elite

    def stream(shard_dir: str, batch_size: int, augment: bool) -> wds.DataPipeline:
        return make_stream(shard_dir, cfg, tokenizer, batch_size=batch_size, rank=rank, world_size=world_size,
                           epoch_seed=step, pixel_scaling=pixel_scaling, augment=augment, text_pooling=text_pooling)

    if cfg.mix == "paired":
        assert cfg.public is not None and cfg.elite is not None
        pipeline = wds.DataPipeline(partial(_pairs, stream(cfg.public, cfg.batch_size, cfg.augment),
                                            stream(cfg.elite, cfg.elite_batch, elite_augment)))
    elif cfg.public is None or cfg.elite is None:
        pipeline = (stream(cfg.public, cfg.batch_size, cfg.augment) if cfg.public is not None
                    else stream(cfg.elite, cfg.batch_size, elite_augment))  # type: ignore[arg-type]
    else:
        if _vocabulary(cfg.public) != _vocabulary(cfg.elite):
            raise ValueError("data.public and data.elite have different label vocabularies; rebuild them together")
        seed = stable_seed(cfg.seed, step)
        kwargs = {"rank": rank, "world_size": world_size, "resampled": True, "shuffle": True,
                  "scaling": pixel_scaling}
        public = _samples(cfg.public, cfg.split, cfg, seed=stable_seed(seed, "public"), augment=cfg.augment,
                          **kwargs)
        elite = _samples(cfg.elite, cfg.split, cfg, seed=stable_seed(seed, "elite"), augment=elite_augment,
                         **kwargs)
        collate = Collate(tokenizer, cfg.max_text_len, len(_vocabulary(cfg.public)),
                          text_padding(cfg.style, text_pooling))
        pipeline = wds.DataPipeline(partial(_mix, public, elite, cfg.elite_fraction, stable_seed(seed, rank)),
                                    wds.batched(cfg.batch_size, collation_fn=collate, partial=False))
    # Batching happens inside the pipeline (per worker), so the loader itself must not batch again.
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=cfg.workers,
                         persistent_workers=cfg.workers > 0)


def eval_dataset(shard_dir: str | Path, split: str, cfg: DataConfig, tokenizer: Any,
                 pixel_scaling: str = "clip", crop_foreground: bool = False) -> wds.DataPipeline:
    """Every sample of one split once, in shard order, unaugmented, in batches of cfg.batch_size.

    Categorical samples still get a sampled prompt as caption, from a fixed seed, so runs compare equal.
    Iterate it directly (single process) or through a DataLoader with batch_size=None.
    """
    samples = _samples(shard_dir, split, cfg, rank=0, world_size=1, resampled=False,
                       seed=stable_seed(cfg.seed, "eval"), augment=False, shuffle=False, scaling=pixel_scaling,
                       crop_foreground=crop_foreground)
    # evaluation keeps the fixed padding (text_padding without a pooling): embeddings compare across runs
    collate = Collate(tokenizer, cfg.max_text_len, len(_vocabulary(shard_dir)), text_padding(cfg.style, None))
    return wds.DataPipeline(samples, wds.batched(cfg.batch_size, collation_fn=collate, partial=True))
