"""pretrain.model: shapes and norms, gradients, attention-kernel equivalence, weight loading, param groups."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kernels import contrastive_loss
from pretrain.config import field_docs, from_dict
from pretrain.engine import param_groups
from pretrain.model import ModelConfig, RetinaCLIP, TextConfig, VisionConfig, build_model
from pretrain.towers import build_text_tower, build_vision_tower, offline_minilm_path
from tests.helpers import tiny_model_config

BATCH, SEQ, PX = 3, 12, 64


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(BATCH, 3, PX, PX, generator=g)
    ids = torch.randint(1000, 2000, (BATCH, SEQ), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, 7:] = 0  # one padded caption
    return pixels, ids, mask


@pytest.fixture(scope="module")
def tiny() -> RetinaCLIP:
    torch.manual_seed(0)
    return build_model(tiny_model_config()).eval()


def test_configs_document_every_field():
    for cls in (VisionConfig, TextConfig, ModelConfig):
        assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}
    cfg = from_dict(ModelConfig, {"vision": {"model_kwargs": {"depth": 2}}, "text": {"random_init": True}})
    assert cfg.vision.model_kwargs == {"depth": 2} and cfg.text.random_init and cfg.embed_dim == 512


def test_forward_shapes_and_unit_norm(tiny):
    pixels, ids, mask = _inputs()
    out = tiny(pixels, ids, mask)
    assert out["image_embeds"].shape == out["text_embeds"].shape == (BATCH, 32)
    for key in ("image_embeds", "text_embeds"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(BATCH))
    torch.testing.assert_close(out["logit_scale"], torch.tensor([1 / 0.07]))
    torch.testing.assert_close(tiny.get_image_features(pixels), out["image_embeds"])
    torch.testing.assert_close(tiny.get_text_features(ids, mask), out["text_embeds"])
    # 64 px / 16 px patches = 4 x 4 tokens, class token dropped; ViT-Tiny width 192.
    assert tiny.image_tokens(pixels).shape == (BATCH, 16, 192)


def test_logit_scale_is_clamped():
    model = build_model(tiny_model_config())
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.logit_scale_value().item() == pytest.approx(100.0)


def test_gradients_reach_both_towers_and_logit_scale():
    torch.manual_seed(1)
    model = build_model(tiny_model_config()).train()
    out = model(*_inputs())
    contrastive_loss(out["image_embeds"], out["text_embeds"], model.logit_scale_value()).backward()
    # Every trainable parameter takes part (the BERT pooler is dropped): DDP/ZeRO need no unused parameters.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    for part in (model.vision_model, model.text_model, model.visual_projection, model.text_projection):
        assert any(p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.logit_scale.grad.abs() > 0


def _with_checkpointing(cfg: ModelConfig, on: bool) -> ModelConfig:
    # No dropout, so train-mode outputs are deterministic and comparable.
    text = dataclasses.replace(cfg.text, grad_checkpointing=on, config_overrides={
        **cfg.text.config_overrides, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, grad_checkpointing=on), text=text)


def test_grad_checkpointing_matches():
    pixels, ids, mask = _inputs()
    plain = build_model(_with_checkpointing(tiny_model_config(), False)).train()
    ckpt = build_model(_with_checkpointing(tiny_model_config(), True)).train()
    ckpt.load_state_dict(plain.state_dict())
    a, b = plain(pixels, ids, mask), ckpt(pixels, ids, mask)
    torch.testing.assert_close(a["image_embeds"], b["image_embeds"])
    torch.testing.assert_close(a["text_embeds"], b["text_embeds"])
    (b["image_embeds"].sum() + b["text_embeds"].sum()).backward()
    assert ckpt.vision_model.model.blocks[0].attn.qkv.weight.grad is not None
    assert ckpt.text_model.model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_vit_attention_kernel_matches_timm():
    cfg = tiny_model_config().vision
    torch.manual_seed(3)
    reference = build_vision_tower(cfg).eval()
    kernel = build_vision_tower(dataclasses.replace(cfg, attention_backend="eager")).eval()
    kernel.load_state_dict(reference.state_dict())
    assert type(kernel.model.blocks[0].attn).__name__ == "KernelAttention"
    pixels = _inputs()[0]
    with torch.no_grad():
        torch.testing.assert_close(kernel(pixels), reference(pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kernel.forward_tokens(pixels), reference.forward_tokens(pixels),
                                   atol=1e-5, rtol=1e-5)


def test_text_attention_kernel_matches_default_on_minilm():
    _, ids, mask = _inputs()
    reference = build_text_tower(TextConfig(name_or_path=offline_minilm_path())).eval()
    kernel = build_text_tower(TextConfig(name_or_path=offline_minilm_path(), attention_backend="sdpa")).eval()
    assert kernel.model.config._attn_implementation == "retinascale"
    assert kernel.model.config.attention_probs_dropout_prob == 0.0
    with torch.no_grad():
        ref_tokens, ker_tokens = reference.forward_tokens(ids, mask), kernel.forward_tokens(ids, mask)
        real = mask.bool()
        torch.testing.assert_close(ker_tokens[real], ref_tokens[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kernel(ids, mask), reference(ids, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernel.model.embeddings.word_embeddings.weight,
                               reference.model.embeddings.word_embeddings.weight)  # real weights, both loaded


def test_resnet_tower_and_tokens():
    torch.manual_seed(4)
    model = build_model(tiny_model_config("resnet"))
    pixels, ids, mask = _inputs()
    out = model(pixels, ids, mask)
    assert out["image_embeds"].shape == (BATCH, 32)
    # resnet18 downsamples 32x: a 2 x 2 grid of 512 channels.
    assert model.image_tokens(pixels).shape == (BATCH, 4, 512)
    with pytest.raises(ValueError, match="no timm attention module"):
        build_vision_tower(VisionConfig(name="resnet18", image_size=PX, attention_backend="eager"))
    with pytest.raises(ValueError, match="attn_drop_rate"):
        build_vision_tower(dataclasses.replace(tiny_model_config().vision, attention_backend="eager",
                                               model_kwargs={"depth": 2, "attn_drop_rate": 0.1}))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_path_loads_weights(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    cfg = tiny_model_config().vision
    torch.manual_seed(5)
    # A checkpoint with a classifier, as published: the head is dropped, the rest must match exactly.
    source = timm.create_model(cfg.name, num_classes=10, img_size=PX, **cfg.model_kwargs).eval()
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = build_vision_tower(dataclasses.replace(cfg, pretrained_path=str(path))).eval()
    fresh = build_vision_tower(cfg).eval()
    pixels = _inputs()[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), source.forward_head(source.forward_features(pixels),
                                                                       pre_logits=True))
        assert not torch.allclose(fresh(pixels), loaded(pixels))


def test_pretrained_path_missing_is_a_clear_error(tmp_path):
    cfg = dataclasses.replace(tiny_model_config().vision, pretrained_path=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="pretrained_path.*nope.safetensors"):
        build_vision_tower(cfg)


def test_pretrained_path_wrong_architecture_fails(tmp_path):
    import timm

    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    cfg = dataclasses.replace(tiny_model_config().vision, pretrained_path=str(path))
    with pytest.raises(RuntimeError, match="Missing key"):
        build_vision_tower(cfg)


def test_param_groups(tiny):
    decay, no_decay = param_groups(tiny, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    trainable = {id(p) for p in tiny.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    names = {id(p): n for n, p in tiny.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "logit_scale" in skipped
    assert "vision_model.model.pos_embed" in skipped and "vision_model.model.cls_token" in skipped
    extra = {"logit_scale", "vision_model.model.pos_embed", "vision_model.model.cls_token"}
    assert all(n.endswith(".bias") or "norm" in n.lower() or n in extra for n in skipped)
    assert not any(n.endswith(".bias") or "norm" in n.lower() for n in decayed)
    assert {"visual_projection.proj.weight", "text_model.model.embeddings.word_embeddings.weight"} <= decayed


def test_text_random_init_from_model_type():
    tower = build_text_tower(TextConfig(random_init=True, config_overrides={
        "model_type": "bert", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32}))
    ids = torch.randint(0, 100, (2, 5))
    assert tower(ids, torch.ones_like(ids)).shape == (2, 16)
