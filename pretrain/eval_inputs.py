"""What evaluation reads from a shard set without decoding images: its shard list and each sample's metadata.

    urls = shard_urls_or_fail("demo-output/shards/eval", "test")      # EvalInputError when there are none
    meta = shard_metadata("demo-output/shards/elite", "val")          # key -> sample json + has_caption

Shared by evaluation (pretrain.evaluate) and caption scoring (pretrain.captioning).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from shards.printable import error_text, printable

__all__ = ["EvalInputError", "finite_or_none", "shard_metadata", "shard_urls_or_fail"]


class EvalInputError(ValueError):
    """Bad input (missing run files, unusable shard set): the CLI prints it and exits with status 2."""


def shard_urls_or_fail(shard_dir: str | Path, split: str) -> list[str]:
    """The shard files of one split, in index order; EvalInputError if the set is unreadable or has none."""
    from shards.index import shard_urls
    from shards.storage import local_or_url

    try:
        urls = shard_urls(local_or_url(shard_dir), split)
    except (OSError, ValueError) as err:
        raise EvalInputError(str(err)) from None
    if not urls:
        raise EvalInputError(f"{shard_dir}: no shards for split {split!r}")
    return urls


def shard_metadata(shard_dir: str | Path, split: str) -> dict[str, dict]:
    """key -> sample json (+ `has_caption`), read from the json/txt members only (no image decoding)."""
    import webdataset as wds

    from shards.storage import register_with_webdataset

    register_with_webdataset()  # s3:// shard URLs

    keep = lambda name: name.rsplit(".", 1)[-1] in ("json", "txt")  # noqa: E731
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls_or_fail(shard_dir, split)),
                                wds.tarfile_to_samples(select_files=keep))
    out = {}
    for sample in pipeline:
        try:
            meta = json.loads(sample["json"])
        except (KeyError, ValueError) as err:  # a damaged sample: name it rather than fail with a traceback
            raise EvalInputError(f"{sample.get('__url__', shard_dir)}: sample {sample['__key__']}: no usable json "
                                 f"member ({error_text(err)}); starts {printable(sample.get('json', b''))}") from None
        meta["has_caption"] = bool(sample.get("txt", b"").strip())
        out[sample["__key__"]] = meta
    return out


def finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: an undefined metric (e.g. kappa with one predicted class) becomes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj
