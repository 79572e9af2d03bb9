"""One shard sample: the allow-listed decode, the FLAIR-style caption of a categorical sample, the image
transforms, the stable seeds and the skipped-sample counter (what data pipelines and embedding jobs share).

    sample = decode_sample(raw, kb=kb, vocab_ids=ids, transform=eval_transform(224), rng=random.Random(seed))

Only `jpg`/`png`/`txt`/`json` members are ever read (keep_member): images go through PIL and json through
`json.loads`, so nothing in a shard can be unpickled or executed. A sample that does not decode is None,
counted in SKIPPED with its key and reason logged once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from pretrain import flair_data
from pretrain.data_loss import LOSSES
from shards.knowledge import Knowledge
from shards.printable import error_text, printable, printable_text

log = logging.getLogger("pretrain.data")

__all__ = ["ALLOWED_EXTS", "CLIP_MEAN", "CLIP_STD", "IMAGE_EXTS", "SKIPPED", "SkipCounter", "decode_sample",
           "eval_transform", "flair_train_transform", "keep_member", "pixel_stats", "stable_seed", "train_transform"]

# CLIP's normalisation: the image towers we start from (CLIP/OpenCLIP ViTs, and ResNets fine-tuned the same
# way in FLAIR/KeepFIT) were pretrained with it, so keeping it keeps their first-layer statistics valid.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_EXTS = ("jpg", "png")
ALLOWED_EXTS = frozenset((*IMAGE_EXTS, "txt", "json"))


class SkipCounter:
    """Samples skipped in this process, by reason. Each skip is counted; each bad key is logged the first
    time it is met (resampled shards meet the same bad sample again every pass, and one line says it all)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.logged: set[str] = set()

    def add(self, key: str, reason: str, shard: str = "") -> None:
        reason = printable_text(reason, 500)  # the reasons quote bytes with shards.printable; this is the last guard
        self.counts[reason.split(":", 1)[0]] += 1
        LOSSES.bad_sample(shard, key, reason)  # the per-shard account of lost samples (pretrain.data_loss)
        if key not in self.logged:
            self.logged.add(key)
            log.warning("skipping sample %s%s: %s (logged once per key; all skips are counted)", key,
                        f" of {shard}" if shard else "", reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
        self.logged.clear()


SKIPPED = SkipCounter()



def stable_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (Python's hash() of strings is salted per process)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


# ----------------------------------------------------------------------------- transforms


def pixel_stats(scaling: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) applied after scaling pixels to [0, 1]: CLIP's for `clip`, none for `unit` (FLAIR's inputs)."""
    if scaling == "clip":
        return CLIP_MEAN, CLIP_STD
    if scaling == "unit":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    raise ValueError(f"pixel scaling must be clip or unit, got {scaling!r}")


def _to_model_input(scaling: str) -> list:
    steps: list = [v2.ToDtype(torch.float32, scale=True)]
    if scaling != "unit":
        steps.append(v2.Normalize(*pixel_stats(scaling)))
    return steps


def train_transform(image_size: int, scaling: str = "clip") -> v2.Compose:
    """Fundus augmentation that keeps the picture a plausible fundus.

    Mild crops (85-100% of the area, near-square) keep the circular field of view mostly intact; a
    horizontal flip turns a right eye into a plausible left eye; rotation stays small because the
    disc-macula axis is roughly horizontal in every capture; colour jitter covers camera differences.
    """
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=(0.85, 1.0), ratio=(0.95, 1.05), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(15),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
        *_to_model_input(scaling),
    ])


def flair_train_transform(image_size: int, scaling: str = "unit") -> v2.Compose:
    """FLAIR's pretraining augmentation (flair/pretraining/data/transforms.py `augmentations_pretraining`, kornia
    there): flip p=0.5, affine p=0.25 (+-5 degrees, scale 0.9-1), colour jitter p=0.25 (brightness and contrast
    0.2), no crop; on [0, 1] pixels after the resize, as FLAIR augments its [0, 1] batches."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomAffine(degrees=5, scale=(0.9, 1.0))], p=0.25),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.25),
        *_to_model_input(scaling)[1:],
    ])


def eval_transform(image_size: int, scaling: str = "clip", crop_foreground: bool = False) -> v2.Compose:
    """Shard images are already square canvases, so a plain resize loses nothing. With `crop_foreground`, FLAIR's
    evaluation input instead: the field of view cropped out and scaled onto a square canvas (pretrain.flair_data)."""
    if crop_foreground:
        return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Lambda(flair_data.crop_foreground),
                           v2.Lambda(partial(flair_data.canvas_resize, size=image_size)),
                           *_to_model_input(scaling)[1:]])
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((image_size, image_size), antialias=True),
        *_to_model_input(scaling),
    ])


# ----------------------------------------------------------------------------- one sample


def keep_member(name: str) -> bool:
    """tar member filter: anything but the four known extensions is never even read."""
    return name.rsplit(".", 1)[-1].lower() in ALLOWED_EXTS


def _decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # decode fully here so truncated files fail now, not inside a transform
        return img.convert("RGB")  # grayscale FFA/OCT -> 3 channels for the image tower


def _sample_caption(meta: dict, kb: Knowledge, rng: random.Random) -> tuple[str, str | None]:
    """FLAIR-style caption for a categorical sample: a random category in a random prompt template."""
    category = rng.choice(meta["categories"])
    attributes = meta.get("attributes") or []
    attribute = rng.choice(attributes) if attributes else None
    return rng.choice(kb.prompts(category, attribute)), category


def _first_label(meta: dict) -> int:
    labels = meta.get("labels") or []
    return int(labels[0]) if labels else -1


def decode_sample(sample: dict, *, kb: Knowledge, vocab_ids: dict[str, int], transform: Callable,
                  rng: random.Random, caption: Callable[[dict, random.Random], tuple[str, str]] | None = None
                  ) -> dict | None:
    """Raw tar sample -> model-ready sample, or None (counted in SKIPPED) when it cannot be used.
    `caption(meta, rng) -> (caption, category)` captions a categorical sample (default: our templates)."""
    key, caption_fn = printable_text(str(sample.get("__key__", "<unknown>")), 80), caption
    shard = str(sample.get("__url__", ""))
    image_ext = next((ext for ext in IMAGE_EXTS if ext in sample), None)
    if image_ext is None:
        SKIPPED.add(key, "no jpg/png member", shard)
        return None
    try:
        meta = json.loads(sample["json"])
        if not isinstance(meta, dict):
            raise ValueError("json is not an object")
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        SKIPPED.add(key, f"bad json: {error_text(exc)}; starts {printable(sample.get('json', b''))}", shard)
        return None
    try:
        image = _decode_image(sample[image_ext])
    except Exception as exc:  # PIL raises many types for bad bytes; any of them means "skip"
        SKIPPED.add(key, f"bad image: {error_text(exc)}; starts {printable(sample[image_ext])}", shard)
        return None
    caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    category = None
    if not caption:
        if not meta.get("categories"):
            SKIPPED.add(key, "no caption and no categories", shard)
            return None
        try:
            caption, category = caption_fn(meta, rng) if caption_fn else _sample_caption(meta, kb, rng)
        except (ValueError, TypeError) as exc:
            SKIPPED.add(key, f"cannot build a caption: {error_text(exc)}", shard)
            return None
    # The label of the sampled category is the caption's class (for class-aware contrastive losses).
    category_id = vocab_ids.get(kb.normalize(category) or category, -1) if category else _first_label(meta)
    # Augmentation draws from torch's global RNG: seed it per sample from our rng, without disturbing
    # the caller's RNG (with workers=0 this runs in the training process).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.getrandbits(63))
        pixels = transform(image)
    return {"key": key, "dataset": str(meta.get("dataset", "")), "image": pixels, "text": caption,
            "category_id": category_id, "labels": [int(i) for i in meta.get("labels") or []]}
