"""FLAIR's data choices (pretrain.flair_data, `data.style: flair`), each pinned to the public FLAIR code's
behaviour on small deterministic inputs: [0, 1] pixels, the augmentation's probabilities and ranges, the caption
template and definition swap, the held-out categories' substring rule, and dataset-balanced sampling."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pretrain.data import DataConfig, make_stream
from pretrain.flair_data import (FLAIR_HELD_OUT, balance_by_dataset, canvas_resize, crop_foreground, flair_caption,
                                 held_out, li_threshold, load_flair_definitions, without_held_out)
from pretrain.samples import CLIP_MEAN, CLIP_STD, eval_transform, flair_train_transform


def test_unit_scaling_is_pixels_over_255_and_clip_adds_mean_std():
    pixels = np.random.default_rng(0).integers(0, 256, (37, 37, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    unit = eval_transform(37, "unit")(image)  # same size: no resampling
    assert torch.allclose(unit, torch.from_numpy(pixels).permute(2, 0, 1).double().div(255).float(), atol=1e-6)
    clip = eval_transform(37, "clip")(image)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(clip, (unit - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="clip or unit"):
        eval_transform(37, "imagenet")


def test_flair_augmentation_has_flairs_probabilities_and_ranges_and_no_crop():
    steps = flair_train_transform(64, "unit").transforms
    kinds = [type(t).__name__ for t in steps]
    assert not any("Crop" in k for k in kinds)
    flip = next(t for t in steps if isinstance(t, v2.RandomHorizontalFlip))
    assert flip.p == 0.5
    applied = [t for t in steps if isinstance(t, v2.RandomApply)]
    assert [a.p for a in applied] == [0.25, 0.25]
    affine, jitter = applied[0].transforms[0], applied[1].transforms[0]
    assert isinstance(affine, v2.RandomAffine) and list(affine.degrees) == [-5.0, 5.0]
    assert tuple(affine.scale) == (0.9, 1.0) and affine.translate is None and affine.shear is None
    assert isinstance(jitter, v2.ColorJitter)
    assert tuple(jitter.brightness) == pytest.approx((0.8, 1.2)) and tuple(jitter.contrast) == pytest.approx((0.8, 1.2))
    assert jitter.saturation is None and jitter.hue is None


def test_flair_augmentation_flips_about_half_and_keeps_unit_range():
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # bright on the left: a flip moves it right
    image = Image.fromarray(pixels)
    transform = flair_train_transform(32, "unit")
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(400)]
    flipped = sum(float(o[:, :, 24:].mean()) > float(o[:, :, :8].mean()) for o in outs)
    assert 140 < flipped < 260  # Binomial(400, 0.5): far more than 5 sigma of slack
    assert all(float(o.min()) >= 0.0 and float(o.max()) <= 1.0 for o in outs)


DEFINITIONS = {"glaucoma": ["optic nerve damage", "large cup"], "drusen": ["yellow deposits"]}


def captions(meta: dict, definitions: dict | None, n: int = 200) -> Counter:
    rng = random.Random(1)
    return Counter(flair_caption(meta, rng, definitions)[0] for _ in range(n))


def test_flair_caption_template_attribute_and_definition_swap():
    meta = {"categories_raw": ["glaucoma"], "categories": ["glaucoma"], "attributes": [], "path": "07_LAG/a.jpg"}
    assert set(captions(meta, None)) == {"A fundus photograph of glaucoma"}  # no attribute: no double space
    swapped = captions(meta, DEFINITIONS)
    assert set(swapped) == {"A fundus photograph of glaucoma", "A fundus photograph of optic nerve damage",
                            "A fundus photograph of large cup"}
    noisy = {**meta, "attributes": ["noisy"]}
    assert set(captions(noisy, None)) == {"A noisy fundus photograph of glaucoma"}


def test_flair_caption_keeps_the_category_for_flairs_listed_datasets():
    meta = {"categories_raw": ["glaucoma"], "attributes": [], "path": "11_STARE/im0001.ppm"}
    assert set(captions(meta, DEFINITIONS)) == {"A fundus photograph of glaucoma"}


def test_flair_caption_uses_the_dataframes_own_category_strings():
    meta = {"categories_raw": ["drusen"], "categories": ["drusen"], "attributes": [], "path": "04_RFMid/x.png"}
    assert "A fundus photograph of yellow deposits" in captions(meta, DEFINITIONS)


def test_held_out_is_flairs_substring_rule():
    assert held_out({"categories_raw": ["myopic maculopathy grade two"]}, FLAIR_HELD_OUT)
    assert held_out({"categories_raw": ["no cataract"]}, FLAIR_HELD_OUT)  # a substring, as in FLAIR
    assert not held_out({"categories_raw": ["glaucoma", "drusen"]}, FLAIR_HELD_OUT)
    raw = [{"json": json.dumps({"categories_raw": [c]}).encode()} for c in ("glaucoma", "cataract", "normal")]
    kept = [json.loads(s["json"])["categories_raw"][0] for s in without_held_out(raw, FLAIR_HELD_OUT)]
    assert kept == ["glaucoma", "normal"]


def test_definitions_are_parsed_from_flairs_file_never_run(tmp_path):
    marker = tmp_path / "ran"
    source = tmp_path / "dictionary.py"
    source.write_text(f"open({str(marker)!r}, 'w')\n"
                      "definitions = {'glaucoma': ['optic nerve damage'], 'drusen': ['yellow deposits']}\n"
                      "datasets = ['01_EYEPACS']\n")
    assert load_flair_definitions(source) == {"glaucoma": ["optic nerve damage"], "drusen": ["yellow deposits"]}
    assert not marker.exists()
    (tmp_path / "bad.py").write_text("definitions = make_definitions()\n")
    with pytest.raises(ValueError):
        load_flair_definitions(tmp_path / "bad.py")
    (tmp_path / "d.json").write_text(json.dumps({"glaucoma": "not a list"}))
    with pytest.raises(ValueError, match="list of phrases"):
        load_flair_definitions(tmp_path / "d.json")


def test_balance_gives_each_dataset_its_turn():
    stream = [{"json": json.dumps({"path": f"{'A' if i % 10 else 'B'}_SET/{i}.jpg"}).encode(), "i": i}
              for i in range(1, 401)]  # 90% A, 10% B; B first appears at i=10
    out = list(balance_by_dataset(stream, bufsize=16, seed=0))
    assert len(out) == len(stream)
    names = [json.loads(s["json"])["path"].split("/")[0] for s in out]
    after = names[10:]  # once both datasets are seen, they alternate
    assert Counter(after)["A_SET"] - Counter(after)["B_SET"] in (-1, 0, 1)
    assert all(a != b for a, b in zip(after, after[1:]))


def test_flair_style_stream_on_real_shards(tiny_shards, tokenizer, tmp_path):
    definitions = tmp_path / "definitions.json"
    definitions.write_text(json.dumps({"glaucoma": ["optic nerve damage"]}))
    cfg = DataConfig(public=str(tiny_shards["public"]), batch_size=5, image_size=32, max_text_len=24,
                     shuffle_buffer=8, workers=0, style="flair", flair_definitions=str(definitions),
                     hold_out=["glaucoma"], balance_datasets=True)
    stream = iter(make_stream(tiny_shards["public"], cfg, tokenizer, batch_size=5, pixel_scaling="unit"))
    batches = [next(stream) for _ in range(8)]
    texts = [t for b in batches for t in b["text"]]
    assert all(t.startswith("A ") and " fundus photograph of " in t for t in texts)
    assert not any("glaucoma" in t or "optic nerve damage" in t for t in texts)  # held out before captioning
    images = torch.cat([b["image"] for b in batches])
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert len({d for b in batches for d in b["dataset"]}) >= 2
    for batch in batches:  # padded to the batch's longest caption, as FLAIR's tokenizer call does
        assert batch["input_ids"].shape[1] < 24 and bool(batch["attention_mask"][:, -1].any())


def test_li_threshold_is_the_fixed_point_of_lis_iteration():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.08, 0.02, 700), rng.normal(0.6, 0.1, 301)]).clip(0, 1)
    t = li_threshold(values)
    assert 0.12 < t < 0.5  # between the two modes
    shifted, low = values - values.min(), values.min()
    fore, back = shifted[shifted > t - low].mean(), shifted[shifted <= t - low].mean()
    # at convergence t equals one more step of t <- (m_b - m_f) / (ln m_b - ln m_f), within the tolerance
    tolerance = np.min(np.diff(np.unique(shifted))) / 2
    assert abs((back - fore) / (np.log(back) - np.log(fore)) + low - t) <= 4 * tolerance + 1e-9


def test_crop_foreground_finds_the_field_of_view_and_canvas_keeps_the_aspect():
    image = torch.zeros(3, 61, 83)
    yy, xx = torch.meshgrid(torch.arange(61), torch.arange(83), indexing="ij")
    disc = ((yy - 30) ** 2 / 22**2 + (xx - 47) ** 2 / 27**2) <= 1  # a bright ellipse: rows 8-52, cols 20-74
    image[:, disc] = torch.tensor([0.8, 0.4, 0.2]).view(3, 1)
    image[:, 2, 2] = 0.9  # a bright speck outside: not the largest region
    cropped = crop_foreground(image)
    rows, cols = torch.nonzero(disc, as_tuple=True)
    assert tuple(cropped.shape) == (3, int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    canvas = canvas_resize(cropped, 32)
    assert tuple(canvas.shape) == (3, 32, 32)
    height = int(cropped.shape[1] / (cropped.shape[2] / 32))  # the wider side fills the canvas
    assert float(canvas[:, height:].abs().sum()) == 0.0 and float(canvas[:, : height - 1].abs().sum()) > 0  # padded below


def test_eval_transform_with_crop_foreground_gives_unit_range_square_images():
    pixels = np.zeros((50, 70, 3), dtype=np.uint8)
    pixels[10:40, 15:60] = (200, 90, 40)
    out = eval_transform(24, "unit", crop_foreground=True)(Image.fromarray(pixels))
    assert tuple(out.shape) == (3, 24, 24) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float(out[0, 0, 0]) > 0.5  # the crop starts at the field of view's corner: no black border
