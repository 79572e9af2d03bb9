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
from shards.printable import error_text, printable, printable_text
from shards.tarshard import ShardReadError, read_shard

META_FIELDS = ("dataset", "modality", "split", "categories", "labels", "width", "height")
"""What inspect and stats read from a sample's json (every sample built by retina-shards has them)."""


class SampleError(ValueError):
    """One sample that cannot be shown or counted; the message names the shard, the sample key and why."""


def iter_samples(out: Path, split: str | None = None, problems: list[str] | None = None
                 ) -> Iterator[tuple[str, dict]]:
    """(shard name, sample) for every sample, in index order.

    Without `problems` a damaged shard raises ShardReadError; with it, the shard's problem is appended and
    the complete samples read before the damage are still yielded (inspect and stats report what they can)."""
    for entry in load_index(out)["shards"]:
        if split is None or entry["split"] == split:
            try:
                samples = read_shard(out / entry["name"])
            except ShardReadError as exc:
                if problems is None:
                    raise
                problems.append(str(exc))
                samples = exc.samples
            except OSError as exc:  # listed in index.json but gone or unreadable
                if problems is None:
                    raise
                problems.append(f"{out / entry['name']}: cannot read: {exc.strerror or exc}")
                continue
            for sample in samples:
                yield entry["name"], sample


def sample_meta(shard: str | Path, sample: dict) -> dict:
    """The sample's json member as a dict with every field inspect and stats use; SampleError otherwise
    (`shard` is how messages name the shard file)."""
    where = f"{shard}: sample {printable_text(sample['__key__'])}"
    if "json" not in sample:
        raise SampleError(f"{where}: no json member (members: {', '.join(sorted(sample.keys() - {'__key__'}))})")
    try:
        meta = json.loads(sample["json"])
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise SampleError(f"{where}: json does not parse ({error_text(exc)}); starts {printable(sample['json'])}")
    missing = [f for f in META_FIELDS if f not in meta] if isinstance(meta, dict) else list(META_FIELDS)
    if missing:
        raise SampleError(f"{where}: json lacks {', '.join(missing)}; starts {printable(sample['json'])}")
    return meta


def describe(shard: str, sample: dict, width: int = 100, path: Path | None = None) -> str:
    """A few lines about one sample; SampleError (naming `path`, default `shard`) when it cannot be shown."""
    meta = sample_meta(path or shard, sample)
    ext = next((e for e in ("jpg", "png") if e in sample), None)
    try:
        with Image.open(io.BytesIO(sample[ext] if ext else b"")) as img:
            size = f"{img.width}x{img.height} {img.mode}"
    except Exception as exc:  # PIL raises many types for bad bytes
        raise SampleError(f"{path or shard}: sample {printable_text(sample['__key__'])}: "
                          f"{'image does not decode' if ext else 'no jpg/png member'} ({error_text(exc)})") from None
    caption = sample.get("txt", b"").decode("utf-8", errors="replace")
    if len(caption) > width:
        caption = caption[: width - 3] + "..."
    lines = [f"{shard} {sample['__key__']}  {meta['dataset']} {meta['modality']} split={meta['split']}  "
             f"{ext} {size}",
             f"  source     {meta.get('source')}:{meta.get('line')} {meta.get('path')}",
             f"  categories {meta['categories']}  labels {meta['labels']} ({meta.get('labels_from')})"]
    if meta.get("attributes"):
        lines.append(f"  attributes {meta['attributes']}")
    if caption:
        lines.append(f"  caption    {printable_text(caption, width)}")
    if meta.get("caption_zh"):
        lines.append(f"  caption_zh {meta['caption_zh'][:width]}")
    return "\n".join(lines)


def compute_stats(out: Path) -> dict:
    """Counts over every readable sample; `problems` lists the damaged shards and samples left out."""
    index = load_index(out)
    by = {name: Counter() for name in ("dataset", "modality", "split", "category", "image_size")}
    caption_words: list[int] = []
    labelled = 0
    problems: list[str] = []
    for shard, sample in iter_samples(out, problems=problems):
        try:
            meta = sample_meta(out / shard, sample)
        except SampleError as exc:
            problems.append(str(exc))
            continue
        by["dataset"][meta["dataset"]] += 1
        by["modality"][meta["modality"]] += 1
        by["split"][meta["split"]] += 1
        by["image_size"][f"{meta['width']}x{meta['height']}"] += 1
        by["category"].update(meta["categories"])
        labelled += bool(meta["labels"])
        caption = sample.get("txt", b"").decode("utf-8", errors="replace")
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
        "problems": problems,
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
    if stats.get("problems"):
        lines.append(f"problems: {len(stats['problems'])} damaged shard(s) or sample(s) left out of these counts")
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
