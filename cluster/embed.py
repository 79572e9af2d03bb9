"""`retina-cluster embed`: image and text embeddings of a shard split, computed on Ray workers, into a zarr store.

    summary = embed_with_ray(EmbedConfig(run=Path("runs/x"), shards=Path("shards/eval"), split="test",
                                         out=Path("emb.zarr")))
    rows = cluster.store.read_embeddings("emb.zarr")      # image_embeds, text_embeds, keys, text, ...

The store layout is documented in cluster.store. The driver creates the store and hands each Ray task a
contiguous run of whole chunks; a task loads the model once (the run's config.yaml + checkpoint weights),
streams its samples straight from the tar shards (unaugmented: pretrain.data.eval_transform), embeds them chunk
by chunk and marks each chunk done. Nothing depends on how the chunks are spread over tasks: samples are
batched within their chunk, and a categorical sample's prompt comes from an RNG seeded by its key. A killed job
rerun with the same arguments (same checkpoint, shards, chunk and batch size) skips the finished chunks and
ends with the same store; changed arguments start a new store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cluster import store as zstore

__all__ = ["EmbedConfig", "checkpoint_dir", "embed_chunks", "embed_with_ray", "load_model"]


@dataclass
class EmbedConfig:
    run: Path
    """Run folder with config.yaml (model and data settings) and checkpoints/."""
    shards: Path | str
    """Shard set folder (index.json), or s3://bucket/prefix."""
    out: Path
    """The zarr store to write."""
    split: str = "test"
    checkpoint: Path | None = None
    """A checkpoint tag folder or checkpoints folder; None: RUN/checkpoints/latest."""
    chunk: int = 1024
    """Samples per zarr chunk; one task writes whole chunks."""
    batch_size: int = 64
    seed: int = 0
    """Seed of the prompts sampled for categorical samples (with each sample's key)."""


def checkpoint_dir(cfg: EmbedConfig) -> Path:
    """The checkpoint tag folder the weights come from."""
    from pretrain.checkpoint import resolve_checkpoint

    return resolve_checkpoint(cfg.checkpoint if cfg.checkpoint else cfg.run).resolve()


def load_model(cfg: EmbedConfig) -> tuple[Any, Any, Any]:
    """(model in eval mode, tokenizer, the run's TrainConfig): pretrain.runs.load_run, for runs of every method
    (training-only modules such as momentum encoders are not part of the loaded model)."""
    from pretrain.runs import load_run

    run = load_run(cfg.run, checkpoint_dir(cfg))
    return run.model, run.tokenizer, run.config


def _split_shards(shards: Path | str, split: str) -> list[dict]:
    from shards.index import load_index

    return [s for s in load_index(shards)["shards"] if s["split"] == split]


def _raw_samples(shards: Path | str, split: str, start: int, end: int) -> Iterator[dict]:
    """Raw tar samples start..end-1 of the split, in index then tar order, reading only the shards needed."""
    import webdataset as wds

    from pretrain.samples import keep_member
    from shards.storage import join, register_with_webdataset

    register_with_webdataset()  # s3:// shard URLs, in this Ray task's process

    offset = 0
    for shard in _split_shards(shards, split):
        first, offset = offset, offset + shard["samples"]
        if offset <= start or first >= end:
            continue
        source = wds.DataPipeline(wds.SimpleShardList([str(join(shards, shard["name"]))]),
                                  wds.tarfile_to_samples(select_files=keep_member))
        for position, sample in enumerate(source, start=first):
            if start <= position < end:
                yield sample


def _embed_rows(samples: list[dict], model: Any, tokenizer: Any, train_cfg: Any, cfg: EmbedConfig,
                vocab_ids: dict[str, int]) -> dict[str, np.ndarray]:
    import torch

    from pretrain.samples import decode_sample, eval_transform, stable_seed
    from shards.knowledge import load_knowledge

    kb, transform = load_knowledge(), eval_transform(train_cfg.data.image_size, train_cfg.model.vision.pixel_scaling)
    n, dim = len(samples), train_cfg.model.embed_dim
    rows = {"image_embeds": np.zeros((n, dim), np.float32), "text_embeds": np.zeros((n, dim), np.float32),
            "keys": np.array([str(s.get("__key__", "")) for s in samples], dtype=object),
            "text": np.full(n, "", dtype=object), "dataset": np.full(n, "", dtype=object),
            "multi_hot": np.zeros((n, len(vocab_ids)), np.uint8), "valid": np.zeros(n, bool)}
    decoded = []
    for i, sample in enumerate(samples):
        rng = random.Random(stable_seed(cfg.seed, "embed", rows["keys"][i]))
        out = decode_sample(sample, kb=kb, vocab_ids=vocab_ids, transform=transform, rng=rng)
        if out is not None:
            rows["text"][i], rows["dataset"][i], rows["valid"][i] = out["text"], out["dataset"], True
            rows["multi_hot"][i, out["labels"]] = 1
            decoded.append((i, out))
    with torch.no_grad():
        for b in range(0, len(decoded), cfg.batch_size):
            batch = decoded[b:b + cfg.batch_size]
            idx = [i for i, _ in batch]
            images = torch.stack([s["image"] for _, s in batch])
            tokens = tokenizer([s["text"] for _, s in batch], padding="max_length", truncation=True,
                               max_length=train_cfg.data.max_text_len, return_tensors="pt")
            device = next(model.parameters()).device
            rows["image_embeds"][idx] = model.get_image_features(images.to(device)).float().cpu().numpy()
            rows["text_embeds"][idx] = model.get_text_features(
                tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float().cpu().numpy()
    return rows


def embed_chunks(cfg: EmbedConfig, chunks: list[int]) -> int:
    """One Ray task: embed and write the given chunks (sorted, contiguous or not); returns samples written."""
    import torch

    model, tokenizer, train_cfg = load_model(cfg)
    if torch.cuda.is_available():  # Ray hides the GPUs from a task that asked for none
        model = model.cuda()
    group = zstore.open_store(cfg.out, mode="r+")
    size, count = int(group.attrs["chunk"]), int(group.attrs["count"])
    vocab_ids = {name: i for i, name in enumerate(group.attrs["label_vocabulary"])}
    wanted, written, current = set(chunks), 0, []
    lo, hi = min(chunks) * size, min((max(chunks) + 1) * size, count)
    for position, sample in enumerate(_raw_samples(cfg.shards, cfg.split, lo, hi), start=lo):
        number = position // size
        if number in wanted:
            current.append(sample)
        if position + 1 == min((number + 1) * size, count) and number in wanted:
            zstore.write_chunk(group, number, _embed_rows(current, model, tokenizer, train_cfg, cfg, vocab_ids))
            written, current = written + len(current), []
    return written


def _fingerprint(cfg: EmbedConfig, shards: list[dict], tag_dir: Path) -> str:
    """What decides the store's bytes: the split's shards (by sha256), the checkpoint, chunk, batch and seed."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tag_dir.glob("*.pt"))
    key = {"shards": [(s["name"], s["sha256"]) for s in shards], "split": cfg.split, "checkpoint": str(tag_dir),
           "weights": weights, "chunk": cfg.chunk, "batch_size": cfg.batch_size, "seed": cfg.seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def embed_with_ray(cfg: EmbedConfig, tasks: int | None = None, address: str | None = None,
                   cpus_per_task: float = 1.0, gpus_per_task: float = 0.0) -> dict[str, Any]:
    """Create or finish the store with Ray tasks; returns a summary."""
    from cluster.ray_util import connect
    from pretrain.config import load_config
    from pretrain.train import TrainConfig
    from shards.index import load_index
    from shards.storage import is_url

    shards_at = str(cfg.shards) if is_url(cfg.shards) else Path(cfg.shards).resolve()
    cfg = dataclasses.replace(cfg, run=Path(cfg.run).resolve(), shards=shards_at,
                              out=Path(cfg.out).resolve())
    shards = _split_shards(cfg.shards, cfg.split)
    count = sum(s["samples"] for s in shards)
    if count == 0:
        raise ValueError(f"{cfg.shards}: no samples in split {cfg.split!r}")
    tag_dir = checkpoint_dir(cfg)
    train_cfg = load_config(TrainConfig, cfg.run / "config.yaml")
    vocabulary = load_index(cfg.shards)["label_vocabulary"]
    attrs = {"fingerprint": _fingerprint(cfg, shards, tag_dir), "label_vocabulary": vocabulary,
             "source": {"shards": str(cfg.shards), "split": cfg.split,
                        "shard_sha256": {s["name"]: s["sha256"] for s in shards}},
             "model": {"run": str(cfg.run), "checkpoint": str(tag_dir), "method": train_cfg.method,
                       "image_size": train_cfg.data.image_size, "max_text_len": train_cfg.data.max_text_len},
             "batch_size": cfg.batch_size, "seed": cfg.seed}
    group = zstore.create_store(cfg.out, count=count, chunk=cfg.chunk, embed_dim=train_cfg.model.embed_dim,
                                num_labels=len(vocabulary), attrs=attrs)
    pending = zstore.pending_chunks(group)
    total_chunks = int(group["done"].shape[0])
    if pending:
        ray = connect(address)
        remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task)(embed_chunks)
        parts = max(1, min(tasks or int(ray.cluster_resources().get("CPU", 1)), len(pending)))
        refs = [remote.remote(cfg, [int(c) for c in part]) for part in np.array_split(pending, parts)]
        ray.get(refs)
    group.attrs["complete"] = True
    return {"store": str(cfg.out), "count": count, "chunks": total_chunks, "written_now": len(pending),
            "reused": total_chunks - len(pending), "checkpoint": str(tag_dir)}
