"""KeepFIT V1: the revision attention and its MSE against hand-computed values, the three loss terms against
the kernels, gradients, and the offline nearest-caption variant."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kernels import contrastive_loss
from pretrain.model import add_auxiliary, build_model
from pretrain.objectives import build_objective
from pretrain.objectives.keepfit_v1 import KeepFITV1Objective, RevisionAttention
from tests.helpers import run_ranks, tiny_model_config


def _identity(attn: RevisionAttention) -> None:
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            proj.weight.copy_(torch.eye(proj.weight.shape[0]))


def test_revision_attention_by_hand():
    # one head, identity projections: out = softmax(q k^T / sqrt(2)) v, worked out with plain numbers
    attn = RevisionAttention(dim=2, num_heads=1)
    _identity(attn)
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1.0)  # weight of the first key
    expected = torch.tensor([[2.0 * a, 4.0 * (1 - a)]])
    torch.testing.assert_close(attn(q, k, v), expected)
    # the MSE to a public text embedding, as the revision term computes it: mean over all elements
    t = torch.tensor([[1.0, 1.0]])
    mse = ((1 - 2 * a) ** 2 + (1 - 4 * (1 - a)) ** 2) / 2
    assert F.mse_loss(t, attn(q, k, v)).item() == pytest.approx(mse, rel=1e-6)


def test_revision_attention_heads_match_a_loop():
    torch.manual_seed(0)
    attn = RevisionAttention(dim=6, num_heads=3)
    q, k, v = torch.randn(4, 6), torch.randn(5, 6), torch.randn(5, 6)
    Q, K, V = (x.double() @ w.weight.double().T for x, w in ((q, attn.q_proj), (k, attn.k_proj), (v, attn.v_proj)))
    heads = []
    for h in range(3):
        cols = slice(2 * h, 2 * h + 2)
        weights = torch.softmax(Q[:, cols] @ K[:, cols].T / math.sqrt(2), dim=-1)  # over the keys
        heads.append(weights @ V[:, cols])
    expected = torch.cat(heads, dim=1) @ attn.out_proj.weight.double().T
    torch.testing.assert_close(attn(q, k, v).double(), expected, rtol=1e-5, atol=1e-6)


def _batch(tokenizer, captions, categories, seed, keys=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    return {"image": torch.randn(len(captions), 3, 64, 64, generator=g), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"], "text": list(captions),
            "category_ids": torch.tensor(categories), "multi_hot": torch.zeros(len(captions), 4, dtype=torch.uint8),
            "keys": keys or [f"p{seed}-{i}" for i in range(len(captions))]}


@pytest.fixture(scope="module")
def pair(tokenizer):
    public = _batch(tokenizer, ["a fundus photograph of drusen", "a fundus photograph of glaucoma",
                                "a fundus photograph of drusen", "a fundus photograph of normal"], [1, 2, 1, 0], 0)
    elite = _batch(tokenizer, ["drusen scattered at the posterior pole", "cupped optic disc, right eye",
                               "flame haemorrhages"], [1, 2, 3], 1)
    return public, elite


def test_terms_match_kernels_and_hand_mse(tokenizer, pair):
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    objective = build_objective("keepfit_v1")
    assert isinstance(objective, KeepFITV1Objective) and objective.revision_weight == 100.0
    add_auxiliary(model, objective.auxiliary_modules(model))
    public, elite = pair
    terms = objective(model, pair)
    assert list(terms) == ["contrastive", "elite_contrastive", "revision"]
    with torch.no_grad():
        p = model(public["image"], public["input_ids"], public["attention_mask"])
        e = model(elite["image"], elite["input_ids"], elite["attention_mask"])
        scale = p["logit_scale"]
        torch.testing.assert_close(terms["contrastive"], contrastive_loss(
            p["image_embeds"], p["text_embeds"], scale, labels=public["category_ids"], positives="labels"))
        torch.testing.assert_close(terms["elite_contrastive"],
                                   contrastive_loss(e["image_embeds"], e["text_embeds"], scale))
        revised = model.auxiliary["revision_attention"](p["image_embeds"], e["image_embeds"], e["text_embeds"])
        mse = ((p["text_embeds"] - revised) ** 2).sum() / revised.numel()
    torch.testing.assert_close(terms["revision"], 100.0 * mse, rtol=1e-5, atol=1e-7)
    terms["revision"].backward()
    for part in (model.auxiliary["revision_attention"].q_proj, model.auxiliary["revision_attention"].out_proj, model.text_projection.proj,
                 model.visual_projection.proj):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


def test_needs_paired_batches(tokenizer, pair):
    model = build_model(tiny_model_config())
    objective = KeepFITV1Objective()
    add_auxiliary(model, objective.auxiliary_modules(model))
    with pytest.raises(ValueError, match="data.mix: paired"):
        objective(model, pair[0])


def test_offline_variant_pulls_toward_attached_caption(tokenizer, pair, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    public, elite = pair
    attached = {public["keys"][0]: "drusen scattered at the posterior pole", public["keys"][3]: "a healthy retina"}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(attached))
    objective = KeepFITV1Objective(offline_captions=str(path), revision_weight=10.0)
    add_auxiliary(model, objective.auxiliary_modules(model))
    assert not hasattr(model, "auxiliary")
    terms = objective(model, public)  # no elite batch needed offline: no elite term
    assert list(terms) == ["contrastive", "revision"]
    with torch.no_grad():
        p = model(public["image"], public["input_ids"], public["attention_mask"])
        tok = tokenizer(list(attached.values()), padding="max_length", truncation=True, max_length=32,
                        return_tensors="pt")
        target = model.get_text_features(tok["input_ids"], tok["attention_mask"])
    expected = 10.0 * F.mse_loss(p["text_embeds"][[0, 3]], target)
    torch.testing.assert_close(terms["revision"], expected, rtol=1e-5, atol=1e-7)
    assert set(objective(model, pair)) == {"contrastive", "elite_contrastive", "revision"}


# ----------------------------------------------------------------------------- 2-process DeepSpeed (CPU, gloo)

STEPS = 6


def _worker(rank: int, world: int, stages: tuple[int, ...], pairs: list[tuple[dict, dict]]) -> dict:
    from pretrain.engine import EngineConfig, build_engine, init_distributed_env, train_step
    from pretrain.objectives import weighted_total

    init_distributed_env()
    public, elite = pairs[rank]
    result = {}
    for stage in stages:
        torch.manual_seed(0)
        model = build_model(tiny_model_config())
        objective = KeepFITV1Objective()
        add_auxiliary(model, objective.auxiliary_modules(model))
        engine = build_engine(model, EngineConfig(zero_stage=stage, micro_batch_size=4, lr=5e-3, warmup_steps=1,
                                                  total_steps=STEPS))[0]

        def loss_fn(eng, b):
            terms = objective(eng.module, b)
            return {"loss": weighted_total(terms, {}), **terms}

        result[stage] = [train_step(engine, loss_fn, (public, elite)) for _ in range(STEPS)]
    return result


def test_two_processes_zero0_2_3_train(tokenizer):
    stages = (0, 2, 3)
    pairs = [(_batch(tokenizer, ["a fundus photograph of drusen", "a fundus photograph of glaucoma",
                                 "a fundus photograph of drusen", "a fundus photograph of normal"], [1, 2, 1, 0],
                     seed=rank),
              _batch(tokenizer, ["drusen scattered at the posterior pole", "cupped optic disc"], [1, 2],
                     seed=10 + rank)) for rank in range(2)]
    for result in run_ranks(_worker, 2, stages, pairs):
        for stage in stages:
            steps = result[stage]
            assert all(math.isfinite(v) for terms in steps for v in terms.values()), (stage, steps)
            assert set(steps[0]) == {"loss", "contrastive", "elite_contrastive", "revision"}
            assert steps[-1]["loss"] < steps[0]["loss"], (stage, [s["loss"] for s in steps])
