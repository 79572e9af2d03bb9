"""FLAIR parity of the model: text pooling, the logit-scale range, and the torchvision ResNet-50 layout.

References are written here from FLAIR's definitions (flair/modeling/model.py TextModel.forward,
FLAIRModel.compute_logits, VisionModel), on a real transformers BertModel and real torchvision/timm ResNets.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pretrain.hf.export import build_hf_config
from pretrain.hf.modeling_retinascale import RetinaScaleModel
from pretrain.model import build_model
from pretrain.towers import TextConfig, build_text_tower
from tests.helpers import tiny_model_config

BATCH, SEQ = 3, 13


def _text_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (BATCH, SEQ), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 10:] = 0
    ids[mask == 0] = 0  # [PAD]
    return ids, mask


def _tiny_text(pooling: str, layers: int = 3) -> TextConfig:
    text = tiny_model_config().text
    return dataclasses.replace(text, pooling=pooling, config_overrides={**text.config_overrides,
                                                                        "num_hidden_layers": layers})


def _flair_reference(bert: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, masked: bool) -> torch.Tensor:
    """FLAIR TextModel.forward before the projection; `masked` averages each caption's real tokens only."""
    hidden = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    layers = torch.stack([hidden[1], hidden[2], hidden[-1]])  # (3, B, L, H)
    if not masked:
        return layers.permute(1, 0, 2, 3).mean(2).mean(1)
    rows = [layers[:, b, mask[b].bool()].mean(dim=1).mean(dim=0) for b in range(ids.shape[0])]
    return torch.stack(rows)


@pytest.mark.parametrize("pooling", ["flair", "flair_masked"])
def test_flair_pooling_matches_flair_text_model(pooling):
    torch.manual_seed(11)
    tower = build_text_tower(_tiny_text(pooling)).eval()
    ids, mask = _text_inputs(5)
    with torch.no_grad():
        expected = _flair_reference(tower.model, ids, mask, masked=pooling == "flair_masked")
        torch.testing.assert_close(tower(ids, mask), expected, atol=1e-5, rtol=1e-5)
        # padding changes FLAIR's feature (it averages [PAD] positions too), not the masked one's
        cls = build_text_tower(_tiny_text("cls")).eval()
        cls.load_state_dict(tower.state_dict())
        torch.testing.assert_close(cls(ids, mask), tower.forward_tokens(ids, mask)[:, 0])
    assert not torch.allclose(tower(ids, mask), cls(ids, mask))


def test_flair_pooling_needs_two_layers_and_known_names():
    with pytest.raises(ValueError, match="2 layers"):
        build_text_tower(_tiny_text("flair", layers=1))
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_text_tower(_tiny_text("mean"))


def test_export_model_pools_and_clamps_like_the_training_model():
    torch.manual_seed(12)
    cfg = dataclasses.replace(tiny_model_config(), text=_tiny_text("flair"), min_logit_scale=1.0)
    model = build_model(cfg).eval()
    hf = RetinaScaleModel(build_hf_config(cfg)).eval()
    hf.load_state_dict(model.state_dict())
    ids, mask = _text_inputs(6)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_text_features(ids, mask), model.get_text_features(ids, mask),
                                   atol=1e-6, rtol=1e-5)
        for log_scale, expected in ((-2.0, 1.0), (math.log(7.5), 7.5), (6.0, 100.0)):
            model.logit_scale.fill_(log_scale)
            hf.logit_scale.fill_(log_scale)
            assert model.logit_scale_value().item() == pytest.approx(expected)
            assert hf.logit_scale_value().item() == pytest.approx(expected)


def test_default_logit_scale_has_no_lower_clamp():
    model = build_model(tiny_model_config())
    with torch.no_grad():
        model.logit_scale.fill_(-2.0)
    assert model.logit_scale_value().item() == pytest.approx(math.exp(-2.0))


def _randomise_batch_norms(model: torch.nn.Module, g: torch.Generator) -> None:
    """Random affine and running statistics, so a swapped or misnamed norm cannot go unnoticed."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                module.bias.copy_(0.2 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(1 + 0.5 * torch.rand(n, generator=g))


def test_torchvision_resnet50_weights_give_the_same_features_in_timm():
    """FLAIR's VisionModel is torchvision's resnet50 with fc = Identity (2048-d); timm's resnet50 (our tower) has
    the same parameter names and, loaded with those weights, computes the same pooled features."""
    import timm
    import torchvision

    g = torch.Generator().manual_seed(13)
    reference = torchvision.models.resnet50(weights=None)
    reference.fc = torch.nn.Identity()
    _randomise_batch_norms(reference, g)
    ours = timm.create_model("resnet50", pretrained=False, num_classes=0)
    ours.load_state_dict(reference.state_dict(), strict=True)  # same names, same shapes, nothing left over
    pixels = torch.randn(BATCH, 3, 67, 61, generator=g)
    with torch.no_grad():
        expected = reference.eval()(pixels)
        got = ours.eval().forward_head(ours.forward_features(pixels), pre_logits=True)
    assert got.shape == (BATCH, 2048)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
