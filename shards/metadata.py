"""The per-sample JSON written beside each image: what the trainer and evaluators read.

Categories are normalised with the knowledge file; `labels` are the sorted ids of the canonical
categories in the knowledge vocabulary (a sparse multi-hot vector whose length is
`index.json: label_vocabulary`). Caption-only sources get labels extracted from the caption with
negation-aware rules, marked by `labels_from: "caption"`.
"""

from __future__ import annotations

from shards.knowledge import load_knowledge
from shards.records import Record

SHARD_FORMAT_VERSION = 1


def base_metadata(record: Record, split: str, file_sha256: str) -> dict:
    kb = load_knowledge()
    if record.categories:
        canonical, free_text = kb.normalize_all(record.categories)
        labels_from = "categories"
    elif record.caption:
        canonical, free_text = kb.extract_labels(record.caption), []
        labels_from = "caption"
    else:
        canonical, free_text, labels_from = [], [], "none"
    meta = {
        "key": record.key,
        "dataset": record.dataset,
        "modality": record.modality,
        "split": split,
        "categories": canonical + free_text,
        "categories_raw": list(record.categories),
        "labels": kb.label_ids(canonical),
        "labels_from": labels_from,
        "attributes": [a for a in (kb.clean(x) for x in record.attributes) if a],
        "source": record.source,
        "line": record.line,
        "path": record.path,
        "sha256": file_sha256,
    }
    if record.caption_zh:
        meta["caption_zh"] = record.caption_zh
    return meta
