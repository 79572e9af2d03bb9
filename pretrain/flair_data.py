"""FLAIR's pretraining data choices, as options of the data pipeline (`data.style: flair`).

Each piece follows the public FLAIR code (github jusiro/FLAIR), named where it is used:

- pixels scaled to [0, 1] without mean/std (flair/pretraining/data/transforms.py `LoadImage`): the image
  tower's `model.vision.pixel_scaling: unit`, so evaluation and export scale the same way;
- augmentation: pretrain.samples.flair_train_transform;
- the caption "A [ATR] fundus photograph of [CLS]" with a random attribute and category, whose category is then
  swapped for a random one of [category] + its expert definitions, except for the datasets FLAIR lists
  (transforms.py `ProduceDescription`, `AugmentDescription`; main_pretrain.py defaults);
- the unseen-category hold-out: a sample is dropped when any of its categories contains a held-out word
  (pretraining/data/dataloader.py `get_loader`, `banned_categories`);
- dataset-balanced sampling: datasets take turns and each turn draws a random sample of that dataset, with
  replacement (pretraining/data/dataset.py `UniformDataset`). A stream has no index of every sample, so here the
  draw is from a per-dataset buffer of the stream (`balance_by_dataset`);
- evaluation crops the image to its field of view (transforms.py `crop_im`: Li's threshold on the red channel,
  the largest connected component's bounding box), then scales it onto a square canvas, top-left aligned
  (transforms.py `ImageScaling(canvas=True)`, main_transferability.py's defaults): `crop_foreground`,
  `canvas_resize`.

FLAIR's definitions are read from its `flair/modeling/dictionary.py` (data.flair_definitions), parsed with `ast`,
never imported or executed.
"""

from __future__ import annotations

import ast
import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FLAIR_CAPTION", "FLAIR_HELD_OUT", "FLAIR_NO_DEFINITION_SWAP", "balance_by_dataset", "canvas_resize",
           "crop_foreground", "flair_caption", "held_out", "li_threshold", "load_flair_definitions", "sample_dataset", "without_held_out"]

FLAIR_CAPTION = "A [ATR] fundus photograph of [CLS]"  # main_pretrain.py --caption
# AugmentDescription keeps the category for these; as written there, so only 11_STARE and 31_JICHI match
# FLAIR's own dataset folders (06_DEN and 08_ODIR are not 06_EYENET and 08_ODIR-5K).
FLAIR_NO_DEFINITION_SWAP = ("06_EYENET", "11_STARE", "08_ODIR-5K", "31_JICHI")
FLAIR_HELD_OUT = ("myopia", "cataract", "macular hole", "retinitis pigmentosa", "myopic", "myope", "myop",
                  "retinitis")  # main_pretrain.py --banned_categories


def load_flair_definitions(path: str | Path) -> dict[str, list[str]]:
    """The `definitions` dict of FLAIR's flair/modeling/dictionary.py (or a JSON/YAML file of the same mapping).

    The Python file is parsed, not run: only a literal `definitions = {...}` assignment is read."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        for node in ast.parse(text, filename=str(path)).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "definitions" for t in node.targets):
                mapping = ast.literal_eval(node.value)
                break
        else:
            raise ValueError(f"{path}: no `definitions = {{...}}` assignment")
    elif path.suffix == ".json":
        mapping = json.loads(text)
    else:
        import yaml

        mapping = yaml.safe_load(text)
    if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) for p in v)
            for k, v in mapping.items()):
        raise ValueError(f"{path}: definitions must map each category name to a list of phrases")
    return mapping


def sample_dataset(meta: dict) -> str:
    """FLAIR's dataset key: the first folder of the image path (`image_name.split("/")[0]`)."""
    path = str(meta.get("path") or "")
    return path.split("/")[0] if "/" in path else str(meta.get("dataset", ""))


def _categories(meta: dict) -> list[str]:
    return list(meta.get("categories_raw") or meta.get("categories") or [])


def held_out(meta: dict, words: Sequence[str]) -> bool:
    """True when any category of the sample contains a held-out word (FLAIR's substring test)."""
    return any(word in category for category in _categories(meta) for word in words)


def flair_caption(meta: dict, rng: random.Random, definitions: dict[str, list[str]] | None,
                  template: str = FLAIR_CAPTION) -> tuple[str, str]:
    """(caption, category) as FLAIR's ProduceDescription + AugmentDescription build them, from the dataframe's
    own category strings (categories_raw), which FLAIR's definitions are keyed by."""
    categories = _categories(meta)
    attributes = list(meta.get("attributes") or [])
    attribute = rng.choice(attributes) if attributes else ""
    category = rng.choice(categories) if categories else ""
    caption = template.replace("[ATR]", attribute).replace("[CLS]", category).replace("  ", " ")
    if definitions and category in definitions and sample_dataset(meta) not in FLAIR_NO_DEFINITION_SWAP:
        caption = caption.replace(category, rng.choice([category, *definitions[category]]))
    return caption, category


def without_held_out(src: Iterable[dict], words: Sequence[str]) -> Iterator[dict]:
    """Raw samples minus those whose categories contain a held-out word (samples whose json does not parse go
    on, for decode_sample to count as lost)."""
    for sample in src:
        try:
            meta = json.loads(sample["json"])
        except (KeyError, ValueError, UnicodeDecodeError):
            meta = None
        if not (isinstance(meta, dict) and held_out(meta, words)):
            yield sample


def balance_by_dataset(src: Iterable[dict], bufsize: int, seed: int) -> Iterator[dict]:
    """Raw samples with the datasets taking turns, each turn a random draw (with replacement) from a buffer of
    that dataset's most recent samples; one sample is read from the stream per sample given out, so the buffers
    keep moving through the data."""
    rng = random.Random(seed)
    buffers: dict[str, list[dict]] = {}
    turn = 0
    for sample in src:
        try:
            name = sample_dataset(json.loads(sample["json"]))
        except (KeyError, ValueError, UnicodeDecodeError, AttributeError):
            yield sample  # decode_sample counts and logs it as lost
            continue
        buffer = buffers.setdefault(name, [])
        if len(buffer) < bufsize:
            buffer.append(sample)
        else:
            buffer[rng.randrange(bufsize)] = sample
        names = sorted(buffers)
        pick = buffers[names[turn % len(names)]]
        turn += 1
        yield pick[rng.randrange(len(pick))]


# ----------------------------------------------------------------------------- evaluation: field of view


def li_threshold(values: np.ndarray) -> float:
    """Li's minimum cross-entropy threshold (Li & Tam 1998), iterated from the mean as scikit-image's threshold_li
    does: t <- (m_back - m_fore) / (ln m_back - ln m_fore), on values shifted to start at 0."""
    values = values[np.isfinite(values)].astype(np.float64).ravel()
    low = float(values.min())
    values = values - low
    distinct = np.unique(values)
    if distinct.size < 2:
        return low
    tolerance = float(np.min(np.diff(distinct))) / 2
    current, nxt = -2 * tolerance, float(values.mean())
    while abs(nxt - current) > tolerance:
        current = nxt
        fore = values > current
        mean_fore, mean_back = float(values[fore].mean()), float(values[~fore].mean())
        if mean_back == 0.0:
            break
        nxt = (mean_back - mean_fore) / (math.log(mean_back) - math.log(mean_fore))
    return nxt + low


def crop_foreground(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) [0, 1] image -> its field of view: the bounding box of the largest connected region brighter than
    Li's threshold of the red channel (FLAIR's transforms.py `crop_im`)."""
    from scipy import ndimage

    red = image[0].double().numpy()
    mask = red > li_threshold(red)
    labels, count = ndimage.label(mask)
    if count == 0:
        return image
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return image[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def canvas_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): scaled so the longer side is `size` (aspect kept), zero-padded right and
    bottom (FLAIR's `ImageScaling` with canvas=True; torchvision Resize, bilinear, as there)."""
    height, width = image.shape[-2:]
    if height == width:
        return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
    scale = max(height, width) / size
    new = (int(height / scale), int(width / scale))
    image = F.interpolate(image[None], size=new, mode="bilinear", antialias=True)[0]
    return F.pad(image, (0, size - new[1], 0, size - new[0]))
