"""pretrain.objectives: CLIP and FLAIR terms against the kernels, open_clip and the float64 reference;
gradients, paired (public, elite) batches, weighted_total and build_objective."""

from __future__ import annotations

import pytest
import torch

from kernels import contrastive_loss
from kernels.contrastive import LossOptions, reference_contrastive_loss
from pretrain.model import RetinaCLIP, build_model
from pretrain.objectives import (OBJECTIVES, ClipObjective, FlairObjective, build_objective, embed,
                                 merge_batches, weighted_total)
from tests.helpers import tiny_model_config

PX = 64
CAPTIONS = ["optic disc cupping in the right eye", "drusen near the macula", "normal fundus",
            "diabetic retinopathy with microaneurysms", "a photograph", "branch retinal vein occlusion"]
CATEGORIES = [0, 1, 0, 2, -1, 3]  # a repeated class and one sample without a class


@pytest.fixture(scope="module")
def model() -> RetinaCLIP:
    torch.manual_seed(0)
    return build_model(tiny_model_config()).eval()  # eval: no dropout, so repeated forwards agree


def make_batch(tokenizer, captions=CAPTIONS, categories=CATEGORIES, seed: int = 0, max_length: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(captions)
    tokens = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    multi_hot = torch.zeros(n, 8, dtype=torch.uint8)
    for row, c in enumerate(categories):
        if c >= 0:
            multi_hot[row, c] = 1
        if c == 2:
            multi_hot[row, 7] = 1  # one two-label set
    return {"image": torch.randn(n, 3, PX, PX, generator=g), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"], "category_ids": torch.tensor(categories),
            "multi_hot": multi_hot, "text": list(captions), "keys": [f"k{i}" for i in range(n)]}


@pytest.fixture(scope="module")
def batch(tokenizer) -> dict:
    return make_batch(tokenizer)


@pytest.fixture(scope="module")
def embeds(model, batch):
    with torch.no_grad():
        return embed(model, batch)


@pytest.mark.parametrize("objective", [ClipObjective(), FlairObjective(), FlairObjective(use_multi_hot=True)],
                         ids=["clip", "flair", "flair-multi-hot"])
def test_terms_are_finite_scalars(model, batch, objective):
    with torch.no_grad():
        terms = objective(model, batch)
    assert list(terms) == ["contrastive"]
    assert terms["contrastive"].dim() == 0 and torch.isfinite(terms["contrastive"])


def test_clip_matches_kernel_and_open_clip(model, batch, embeds):
    from open_clip.loss import ClipLoss

    with torch.no_grad():
        loss = ClipObjective()(model, batch)["contrastive"]
    image, text, scale = embeds
    torch.testing.assert_close(loss, contrastive_loss(image, text, scale))
    torch.testing.assert_close(loss, ClipLoss()(image, text, scale), rtol=1e-5, atol=1e-5)


def test_flair_matches_float64_reference(model, batch, embeds):
    with torch.no_grad():
        loss = FlairObjective()(model, batch)["contrastive"]
    image, text, scale = embeds
    expected = reference_contrastive_loss(image, text, scale, labels=batch["category_ids"],
                                          opts=LossOptions(positives="labels"))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    # the repeated class makes soft targets differ from identity ones
    assert not torch.allclose(loss, contrastive_loss(image, text, scale))


def test_flair_multi_hot_matches_reference(model, batch, embeds):
    with torch.no_grad():
        loss = FlairObjective(use_multi_hot=True)(model, batch)["contrastive"]
    image, text, scale = embeds
    expected = reference_contrastive_loss(image, text, scale, labels=batch["multi_hot"],
                                          opts=LossOptions(positives="labels"))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


def test_flair_with_distinct_categories_is_clip(model, tokenizer):
    distinct = make_batch(tokenizer, categories=[0, 1, 2, 3, -1, 5])
    with torch.no_grad():
        flair = FlairObjective()(model, distinct)["contrastive"]
        clip = ClipObjective()(model, distinct)["contrastive"]
    torch.testing.assert_close(flair, clip)


@pytest.mark.parametrize("objective", [ClipObjective(), FlairObjective()], ids=["clip", "flair"])
def test_gradients_reach_the_model(model, batch, objective):
    model.zero_grad(set_to_none=True)
    objective(model, batch)["contrastive"].backward()
    for part in ("vision_model", "text_model", "visual_projection", "text_projection"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert model.logit_scale.grad is not None and torch.isfinite(model.logit_scale.grad)
    model.zero_grad(set_to_none=True)


def test_paired_batch_concatenates(model, tokenizer, batch):
    public = make_batch(tokenizer, CAPTIONS[:4], CATEGORIES[:4], seed=1)
    elite = make_batch(tokenizer, CAPTIONS[4:], CATEGORIES[4:], seed=2, max_length=12)  # narrower token width
    merged = merge_batches(public, elite)
    assert merged["image"].shape[0] == 6 and merged["input_ids"].shape == (6, 16)
    torch.testing.assert_close(merged["image"], torch.cat([public["image"], elite["image"]]))
    assert merged["category_ids"].tolist() == CATEGORIES
    assert merged["attention_mask"][4:, 12:].sum() == 0  # padding added to the narrower batch is masked
    assert merged["text"] == CAPTIONS
    with torch.no_grad():
        for objective in (ClipObjective(), FlairObjective(), FlairObjective(use_multi_hot=True)):
            paired = objective(model, (public, elite))["contrastive"]
            torch.testing.assert_close(paired, objective(model, merged)["contrastive"])
        # the merged batch is one contrastive problem: not the mean of the two separate ones
        flair = FlairObjective()
        separate = (flair(model, public)["contrastive"] + flair(model, elite)["contrastive"]) / 2
        assert not torch.allclose(FlairObjective()(model, (public, elite))["contrastive"], separate)


def test_paired_batch_must_be_a_pair(model, batch):
    with pytest.raises(ValueError, match="public, elite"):
        ClipObjective()(model, (batch,))


def test_weighted_total():
    terms = {"contrastive": torch.tensor(2.0), "caption": torch.tensor(3.0)}
    torch.testing.assert_close(weighted_total(terms, {}), torch.tensor(5.0))
    torch.testing.assert_close(weighted_total(terms, {"caption": 0.5}), torch.tensor(3.5))
    with pytest.raises(ValueError, match="captoin"):
        weighted_total(terms, {"captoin": 1.0})


def test_build_objective():
    assert set(OBJECTIVES) >= {"clip", "flair"}
    assert isinstance(build_objective("clip"), ClipObjective)
    flair = build_objective("flair", use_multi_hot=True)
    assert isinstance(flair, FlairObjective) and flair.use_multi_hot and flair.name == "flair"
    with pytest.raises(ValueError, match="known methods: clip, flair"):
        build_objective("keepfit_v9")
    with pytest.raises(TypeError):
        build_objective("clip", no_such_option=1)
