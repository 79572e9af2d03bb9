"""Which existing folder a model writer may replace (export-hf --overwrite, import-hf --overwrite, the text model
of text-pretrain): only an empty folder or a model folder, never a run, a shard set or anything else.

    check_replaceable(out)     # NotReplaceable, naming OUT and some of its files, unless OUT may be replaced

Replacing a folder deletes everything in it, so `--overwrite` must not reach a folder someone else filled. A
model folder is what every one of our writers leaves: config.json beside model.safetensors; one that also holds
a run (config.yaml, checkpoints/) or a shard set (index.json) is not.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["NotReplaceable", "check_replaceable"]

MODEL_FILES = ("config.json", "model.safetensors")
NEVER_REPLACED = ("config.yaml", "checkpoints", "index.json")  # a run or a shard set lives here
SHOWN = 5  # entries named in the error


class NotReplaceable(FileExistsError):
    """OUT exists and is not a folder a model writer may replace; the message names it and what it holds."""


def check_replaceable(out: str | Path) -> None:
    """Nothing if OUT is missing, an empty folder or a model folder (see the module doc); else NotReplaceable."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise NotReplaceable(f"{str(out)!r} exists and is not a folder")
    names = sorted(p.name for p in out.iterdir())
    model = all(name in names for name in MODEL_FILES) and not any(name in names for name in NEVER_REPLACED)
    if names and not model:
        shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names)} entries)" if len(names) > SHOWN else "")
        raise NotReplaceable(f"{str(out)!r} is not a model folder (it holds {shown}): --overwrite replaces only "
                             "an empty folder or one written by export-hf, import-hf or text-pretrain")
