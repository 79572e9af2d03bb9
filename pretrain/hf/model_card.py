"""The model card (README.md) of an export: what the model is, how to load it, its data, evaluation and config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["last_metrics", "model_card"]


def _index_summary(shard_dir: Any) -> str:
    if not shard_dir:
        return "none"
    from shards.storage import join, read_bytes

    try:
        data = json.loads(read_bytes(join(shard_dir, "index.json")))  # a folder or an s3:// URL
    except (OSError, ValueError):  # missing, unreadable (StorageError is a ValueError), not JSON
        return f"`{Path(str(shard_dir)).name}` (index.json not available at export time)"
    shards = data.get("shards") or []
    total = data.get("total_samples") or data.get("num_samples")
    if total is None and isinstance(shards, list):
        total = sum(int(s.get("count", s.get("samples", 0)) or 0) for s in shards if isinstance(s, dict))
    return f"`{Path(str(shard_dir)).name}`: {len(shards)} shards, {total} samples"


def _eval_table(results: dict[str, Any] | None) -> str:
    if not results:
        return "Not evaluated at export time (pass `--eval RESULTS.json` to `retina-pretrain export-hf`).\n"
    rows = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {prefix} | {value:.4g} |")
        else:
            rows.append(f"| {prefix} | {value} |")

    walk("", results)
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def model_card(raw: dict[str, Any], tag: str, hf_config: Any, eval_results: dict[str, Any] | None,
               last_metrics: dict[str, Any] | None) -> str:
    import yaml

    data = raw.get("data") or {}
    decoder = "yes (`caption_logits`)" if hf_config.caption_decoder_config else "no"
    train_line = ""
    if last_metrics:
        train_line = (f"- last logged training step: {last_metrics.get('step')}, loss "
                      f"{last_metrics.get('loss', float('nan')):.4f}\n")
    return f"""---
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags: [retinascale, retina, fundus, clip, vision-language]
---

# RetinaScale {raw.get('method', 'clip')} model (checkpoint `{tag}`)

A retinal image-text dual encoder trained with retinascale: a timm `{hf_config.vision_config['name']}`
image tower at {hf_config.vision_config['image_size']} px, a `{hf_config.text_config.get('model_type')}` text
tower with [CLS] pooling, FLAIR projection heads into a {hf_config.embed_dim}-d space. Caption decoder: {decoder}.

```python
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, pipeline

model = AutoModel.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)   # reads config.json: say so, or
processor = AutoImageProcessor.from_pretrained(PATH, trust_remote_code=True)  # transformers asks interactively
image_embeds = model.get_image_features(**processor(images=image, return_tensors="pt"))
text_embeds = model.get_text_features(**tokenizer(["a fundus photograph of diabetic retinopathy"],
                                                  return_tensors="pt", padding=True))
classify = pipeline("zero-shot-image-classification", model=PATH, trust_remote_code=True)
```

Images: resize to the square canvas, scale to [0, 1], normalise with CLIP's mean/std (no crop), as in training.

## Data

- method: `{raw.get('method')}`, loss weights: `{raw.get('loss_weights')}`
- public set: {_index_summary(data.get('public'))}
- elite set: {_index_summary(data.get('elite'))}
{train_line}
## Evaluation

{_eval_table(eval_results)}
## Training config

```yaml
{yaml.safe_dump(raw, sort_keys=False, default_flow_style=None).rstrip()}
```
"""


def last_metrics(run_config: Path) -> dict[str, Any] | None:
    path = run_config.parent / "metrics.jsonl"
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
