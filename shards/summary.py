"""`retina-shards inspect` and `retina-shards stats`: look inside a shard set.

(Named `summary`, not `inspect`, to stay clear of the standard library module.)
"""

from __future__ import annotations

import io
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Iterator

from PIL import Image

from shards.index import load_index
from shards.tarshard import read_shard


def iter_samples(out: Path, split: str | None = None) -> Iterator[tuple[str, dict]]:
    """(shard name, sample) for every sample, in index order."""
    for entry in load_index(out)["shards"]:
        if split is None or entry["split"] == split:
            for sample in read_shard(out / entry["name"]):
                yield entry["name"], sample


def describe(shard: str, sample: dict, width: int = 100) -> str:
    meta = json.loads(sample["json"])
    ext = "jpg" if "jpg" in sample else "png"
    with Image.open(io.BytesIO(sample[ext])) as img:
        size = f"{img.width}x{img.height} {img.mode}"
    caption = sample.get("txt", b"").decode("utf-8")
    if len(caption) > width:
        caption = caption[: width - 3] + "..."
    lines = [f"{shard} {sample['__key__']}  {meta['dataset']} {meta['modality']} split={meta['split']}  "
             f"{ext} {size}",
             f"  source     {meta['source']}:{meta['line']} {meta['path']}",
             f"  categories {meta['categories']}  labels {meta['labels']} ({meta['labels_from']})"]
    if meta.get("attributes"):
        lines.append(f"  attributes {meta['attributes']}")
    if caption:
        lines.append(f"  caption    {caption}")
    if meta.get("caption_zh"):
        lines.append(f"  caption_zh {meta['caption_zh'][:width]}")
    return "\n".join(lines)


def compute_stats(out: Path) -> dict:
    index = load_index(out)
    by = {name: Counter() for name in ("dataset", "modality", "split", "category", "image_size")}
    caption_words: list[int] = []
    labelled = 0
    for _, sample in iter_samples(out):
        meta = json.loads(sample["json"])
        by["dataset"][meta["dataset"]] += 1
        by["modality"][meta["modality"]] += 1
        by["split"][meta["split"]] += 1
        by["image_size"][f"{meta['width']}x{meta['height']}"] += 1
        by["category"].update(meta["categories"])
        labelled += bool(meta["labels"])
        caption = sample.get("txt", b"").decode("utf-8")
        if caption:
            caption_words.append(len(caption.split()))
    return {
        "samples": sum(by["split"].values()),
        "totals": index["totals"],
        "rejects_by_reason": index["rejects_by_reason"],
        "with_labels": labelled,
        "with_caption": len(caption_words),
        "caption_words": ({"median": statistics.median(caption_words), "max": max(caption_words)}
                          if caption_words else {}),
        **{f"by_{name}": dict(counter.most_common()) for name, counter in by.items()},
    }


def format_stats(stats: dict, top: int = 15) -> str:
    t = stats["totals"]
    lines = [f"samples {stats['samples']}  (rows read {t['rows_read']} = written {t['written']} + rejected "
             f"{t['rejected']} + duplicates {t['duplicates']})",
             f"with caption {stats['with_caption']}  with labels {stats['with_labels']}  "
             f"caption words {stats['caption_words']}"]
    for name in ("split", "modality", "dataset", "image_size", "category"):
        counts = stats[f"by_{name}"]
        shown = list(counts.items())[:top]
        more = f"  (+{len(counts) - top} more)" if len(counts) > top else ""
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in shown) + more)
    if stats["rejects_by_reason"]:
        lines.append("rejects: " + ", ".join(f"{k} {v}" for k, v in stats["rejects_by_reason"].items()))
    return "\n".join(lines)


def plot_stats(stats: dict, path: Path, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("by_dataset", "samples per dataset"), ("by_modality", "samples per modality"),
              ("by_category", f"top {top} categories")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5))
    for ax, (key, title) in zip(axes, panels):
        items = list(stats[key].items())[:top]
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
