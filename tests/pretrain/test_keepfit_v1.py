"""KeepFIT V1: the revision attention and its MSE against hand-computed values, the three loss terms against
the kernels, gradients, the offline nearest-caption variant, and the release's options (issue 16): separate
forwards, local revision memory, the released attention, the weight per embedding dim, the collapse
diagnostic, unaugmented elite samples and a run that starts from a FLAIR run folder."""

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
# ZeRO-3 with the release's settings (two forwards before one backward, no gather of the revision memory)
OPTIONS = {0: {}, 2: {}, 3: {"separate_forwards": True, "revision_memory": "local", "release_attention": True}}


def _worker(rank: int, world: int, stages: tuple[int, ...], pairs: list[tuple[dict, dict]]) -> dict:
    from pretrain.engine import EngineConfig, build_engine, init_distributed_env, train_step
    from pretrain.objectives import weighted_total

    init_distributed_env()
    public, elite = pairs[rank]
    result = {}
    for stage in stages:
        torch.manual_seed(0)
        model = build_model(tiny_model_config())
        objective = KeepFITV1Objective(**OPTIONS[stage])
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


# ----------------------------------------------------------------------------- the release's options (issue 16)

CAPTIONS = ["a fundus photograph of drusen", "cupped optic disc, right eye", "flame haemorrhages near the disc",
            "a fundus photograph of glaucoma", "microaneurysms and hard exudates", "a healthy retina",
            "a fundus photograph of normal"]


def _random_pair(tokenizer, seed: int, n_public: int = 5, n_elite: int = 3) -> tuple[dict, dict]:
    """Fresh random images, captions and categories, odd sizes."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(CAPTIONS), (n_public + n_elite,), generator=g).tolist()
    categories = torch.randint(3, (n_public,), generator=g).tolist()
    public = _batch(tokenizer, [CAPTIONS[i] for i in pick[:n_public]], categories, seed)
    elite = _batch(tokenizer, [CAPTIONS[i] for i in pick[n_public:]], list(range(n_elite)), seed + 1000)
    return public, elite


def _keepfit(model, **options) -> KeepFITV1Objective:
    objective = KeepFITV1Objective(**options)
    add_auxiliary(model, objective.auxiliary_modules(model))
    return objective


def _revision64(attn: RevisionAttention, queries, keys, values, text) -> torch.Tensor:
    """MSE(text, attention) in float64 with our attention written out: softmax over keys per head."""
    q, k, v = (x.double() @ w.weight.double().T for x, w in ((queries, attn.q_proj), (keys, attn.k_proj),
                                                          (values, attn.v_proj)))
    d = q.shape[1] // attn.num_heads
    heads = [torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), dim=-1)
             @ v[:, h * d:(h + 1) * d] for h in range(attn.num_heads)]
    revised = torch.cat(heads, dim=1) @ attn.out_proj.weight.double().T
    return ((text.double() - revised) ** 2).sum() / revised.numel()


def test_separate_forwards_equal_two_model_calls(tokenizer):
    # a ResNet (BatchNorm) in training mode: batch statistics per call; the text tower in eval mode, so its
    # dropout draws no random mask and two calls are comparable
    torch.manual_seed(1)
    model = build_model(tiny_model_config("resnet"))
    objective = _keepfit(model, separate_forwards=True)
    model.train()
    model.text_model.eval()
    public, elite = _random_pair(tokenizer, seed=7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    terms = objective(model, (public, elite))
    model.load_state_dict(state)  # the BatchNorm running statistics as they were before the objective's calls
    with torch.no_grad():
        p = model(public["image"], public["input_ids"], public["attention_mask"])
        e = model(elite["image"], elite["input_ids"], elite["attention_mask"])
        merged = model(torch.cat([public["image"], elite["image"]]), torch.cat([public["input_ids"],
                       elite["input_ids"]]), torch.cat([public["attention_mask"], elite["attention_mask"]]))
    scale = p["logit_scale"]
    torch.testing.assert_close(terms["contrastive"], contrastive_loss(
        p["image_embeds"], p["text_embeds"], scale, labels=public["category_ids"], positives="labels"))
    torch.testing.assert_close(terms["elite_contrastive"],
                               contrastive_loss(e["image_embeds"], e["text_embeds"], scale))
    revision = _revision64(model.auxiliary["revision_attention"], p["image_embeds"], e["image_embeds"],
                           e["text_embeds"], p["text_embeds"])
    torch.testing.assert_close(terms["revision"].double(), 100.0 * revision, rtol=1e-5, atol=1e-7)
    # BatchNorm statistics per stream do change the embeddings: one forward of P u E gives other image rows
    assert not torch.allclose(merged["image_embeds"][:5], p["image_embeds"], atol=1e-4)


def _memory_worker(rank: int, world: int, pairs: list[tuple[dict, dict]]) -> dict:
    from pretrain.engine import init_distributed_env

    init_distributed_env()
    out = {}
    for pair in pairs:  # in float64: the tiny random text tower puts every caption close together, and the two
        for batch in pair:  # memories' revisions differ by about 1e-4 relative only
            batch["image"] = batch["image"].double()
    for memory in ("local", "global"):
        torch.manual_seed(0)
        model = build_model(tiny_model_config()).double().eval()
        objective = _keepfit(model, revision_memory=memory)
        model.auxiliary.double()
        terms = objective(model, pairs[rank])
        terms["revision"].backward()
        out[memory] = terms["revision"].detach()
        with torch.no_grad():  # the references: this rank's elite rows only, and every rank's in rank order
            emb = [model(b["image"], b["input_ids"], b["attention_mask"]) for pair in pairs for b in pair]
            p, elites = emb[2 * rank], emb[1::2]
            attn = model.auxiliary["revision_attention"]
            out[f"{memory}_own"] = _revision64(attn, p["image_embeds"], elites[rank]["image_embeds"],
                                               elites[rank]["text_embeds"], p["text_embeds"])
            out[f"{memory}_all"] = _revision64(attn, p["image_embeds"],
                                               torch.cat([x["image_embeds"] for x in elites]),
                                               torch.cat([x["text_embeds"] for x in elites]), p["text_embeds"])
    return out


def test_local_revision_memory_uses_only_this_ranks_elite_rows(tokenizer):
    pairs = [_random_pair(tokenizer, seed=20 + rank, n_public=5, n_elite=3) for rank in range(2)]
    for out in run_ranks(_memory_worker, 2, pairs):
        torch.testing.assert_close(out["local"], 100.0 * out["local_own"], rtol=1e-10, atol=0)
        torch.testing.assert_close(out["global"], 100.0 * out["global_all"], rtol=1e-10, atol=0)
        assert abs(out["local_own"] / out["local_all"] - 1) > 1e-6  # the two memories differ here


class _ReleasedMHA(torch.nn.Module):
    """The released MultiHeadAttention's forward as its code computes it (MM-Retinal KeepFIT-CFP
    keepfit/modeling/model.py), reimplemented here: inputs (1, L, D), heads folded into the batch dimension,
    `softmax(scores)` without dim on the 3-d scores, dropout on the weights."""

    def __init__(self, attn: RevisionAttention) -> None:
        super().__init__()
        self.attn, self.dropout = attn, torch.nn.Dropout(0.5)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (1, L, D) -> (H, L, D/H)
        h = self.attn.num_heads
        return x.reshape(1, x.shape[1], h, -1).permute(0, 2, 1, 3).reshape(-1, x.shape[1], x.shape[2] // h)

    def forward(self, queries, keys, values):
        w = self.attn
        q = self._split(queries.unsqueeze(0) @ w.q_proj.weight.T)
        k = self._split(keys.unsqueeze(0) @ w.k_proj.weight.T)
        v = self._split(values.unsqueeze(0) @ w.v_proj.weight.T)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        weights = F.softmax(scores, dim=0)  # torch's implicit dim for a 3-d tensor (asserted below)
        out = torch.bmm(self.dropout(weights), v)  # (H, Lq, D/H)
        out = out.reshape(1, w.num_heads, out.shape[1], -1).permute(0, 2, 1, 3).reshape(1, out.shape[1], -1)
        return (out @ w.out_proj.weight.T).squeeze(0)


def test_implicit_softmax_dim_of_a_3d_tensor_is_0():
    x = torch.randn(2, 3, 5)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        implicit = F.softmax(x)  # the release's call, which the reference above mirrors with dim=0
    torch.testing.assert_close(implicit, F.softmax(x, dim=0))


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_release_attention_matches_the_released_module(heads):
    torch.manual_seed(heads)
    dim = 6 * heads
    ours = RevisionAttention(dim, heads, release=True).double().eval()
    ref = _ReleasedMHA(ours).eval()
    inputs = [torch.randn(n, dim, dtype=torch.float64, requires_grad=True) for n in (5, 3, 3)]
    out = ours(*inputs)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).double().view_as(out)).sum(),
                                [*inputs, *ours.parameters()])
    expected = ref(*inputs)
    expected_grads = torch.autograd.grad((expected * torch.linspace(-1, 1, out.numel()).double()
                                          .view_as(out)).sum(), [*inputs, *ours.parameters()])
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    if heads == 1:  # one head: softmax over a single entry, every weight 1, the output is a sum over the keys
        torch.testing.assert_close(out, (inputs[2] @ ours.v_proj.weight.T).sum(0).expand(5, -1)
                                   @ ours.out_proj.weight.T)
    # ours (softmax over keys) is a different function
    plain = RevisionAttention(dim, heads).double()
    plain.load_state_dict(ours.state_dict())
    assert not torch.allclose(plain(*inputs), out)


def test_release_attention_applies_dropout_in_training():
    torch.manual_seed(0)
    ours = RevisionAttention(8, 2, release=True).double()
    ref = _ReleasedMHA(ours)
    q, k, v = (torch.randn(n, 8, dtype=torch.float64) for n in (5, 7, 7))
    ours.train(), ref.train()
    torch.manual_seed(123)
    out = ours(q, k, v)
    torch.manual_seed(123)
    torch.testing.assert_close(out, ref(q, k, v))  # the same mask: dropout 0.5 on the (heads, q, k) weights
    ours.eval()
    assert not torch.allclose(out, ours(q, k, v))
    torch.manual_seed(124)
    assert not torch.allclose(out, ours.train()(q, k, v))  # a fresh mask each call


def test_revision_weight_per_embedding_dim(tokenizer):
    objective = KeepFITV1Objective(revision_weight=100.0, revision_weight_dim=512)
    assert objective.revision_scale(512) == 100.0 and objective.revision_scale(64) == 12.5
    assert KeepFITV1Objective(revision_weight=100.0).revision_scale(64) == 100.0  # null: unchanged
    torch.manual_seed(3)
    model = build_model(tiny_model_config()).eval()  # D = 32
    objective = _keepfit(model, revision_weight_dim=512)
    public, elite = _random_pair(tokenizer, seed=3)
    terms = objective(model, (public, elite))
    with torch.no_grad():
        p = model(public["image"], public["input_ids"], public["attention_mask"])
        e = model(elite["image"], elite["input_ids"], elite["attention_mask"])
        attn = model.auxiliary["revision_attention"]
        revised = attn(p["image_embeds"], e["image_embeds"], e["text_embeds"]).double()
        squared = ((p["text_embeds"].double() - revised) ** 2).sum()  # sum over samples of squared distances
    # the paper's pull at D = 512: 100 per (B * 512) per unit of squared distance, whatever D is
    torch.testing.assert_close(terms["revision"].double(), 100.0 * squared / (5 * 512), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="revision_weight_dim"):
        KeepFITV1Objective(revision_weight_dim=0)
    with pytest.raises(ValueError, match="revision_memory"):
        KeepFITV1Objective(revision_memory="everywhere")


def test_collapse_diagnostic_of_each_term(tokenizer):
    from pretrain.objectives.base import mean_pairwise_cosine

    torch.manual_seed(4)
    model = build_model(tiny_model_config()).eval()
    objective = _keepfit(model, separate_forwards=True, revision_memory="local")
    public, elite = _random_pair(tokenizer, seed=4)
    objective(model, (public, elite))
    with torch.no_grad():
        p = model(public["image"], public["input_ids"], public["attention_mask"])
        e = model(elite["image"], elite["input_ids"], elite["attention_mask"])
        revised = model.auxiliary["revision_attention"](p["image_embeds"], e["image_embeds"], e["text_embeds"])
    expected = {"cos_image/contrastive": p["image_embeds"], "cos_text/contrastive": p["text_embeds"],
                "cos_image/elite_contrastive": e["image_embeds"], "cos_text/elite_contrastive": e["text_embeds"],
                "cos_text/revision": revised}
    assert set(objective.diagnostics) == set(expected)
    for key, rows in expected.items():
        torch.testing.assert_close(objective.diagnostics[key], mean_pairwise_cosine(rows), rtol=1e-5, atol=1e-6)


def test_elite_stream_unaugmented_when_augment_elite_is_false(tiny_shards, tokenizer):
    from pretrain.data import DataConfig, eval_dataset, make_loader

    cfg = DataConfig(public=str(tiny_shards["public"]), elite=str(tiny_shards["elite"]), mix="paired", batch_size=5,
                     elite_batch_size=None, image_size=32, max_text_len=32, shuffle_buffer=4, workers=0,
                     augment=True, augment_elite=False)
    public, elite = next(iter(make_loader(cfg, tokenizer)))
    assert public["image"].shape[0] == elite["image"].shape[0] == 5  # elite_batch_size null: 1:1
    plain = {name: {key: image for batch in eval_dataset(tiny_shards[name], "train", cfg, tokenizer)
                    for key, image in zip(batch["keys"], batch["image"])} for name in ("public", "elite")}
    for key, image in zip(elite["keys"], elite["image"]):
        torch.testing.assert_close(image, plain["elite"][key])  # the evaluation transform, exactly
    assert any(not torch.allclose(image, plain["public"][key]) for key, image in zip(public["keys"], public["image"]))


# ----------------------------------------------------------------------------- continuing from a FLAIR run


def _flair_then_keepfit(rank: int, world: int, root: str, public: str, elite: str) -> None:
    import dataclasses
    from pathlib import Path

    from pretrain.config import load_config
    from pretrain.train import TrainConfig, train

    base = load_config(TrainConfig, Path(__file__).resolve().parents[2] / "pretrain" / "configs" / "tiny_cpu.yaml")
    data = dataclasses.replace(base.data, public=public, elite=elite, workers=0, batch_size=4, shuffle_buffer=8)
    engine = dataclasses.replace(base.engine, warmup_steps=1)
    flair = dataclasses.replace(base, data=data, engine=engine, run=dataclasses.replace(
        base.run, dir=f"{root}/flair", steps=1, log_every=1, save_every=0))
    train(flair)
    keepfit = dataclasses.replace(
        flair, method="keepfit_v1", objective={"separate_forwards": True, "revision_memory": "local"},
        loss_weights={}, model=dataclasses.replace(flair.model, init_from=f"{root}/flair"),
        data=dataclasses.replace(data, mix="paired", elite_batch_size=None, augment_elite=False),
        run=dataclasses.replace(flair.run, dir=f"{root}/keepfit", save_initial=True))
    train(keepfit)


def test_keepfit_run_starts_from_a_flair_run_folder(tiny_shards, tmp_path):
    from pretrain.consolidate import load_model_state_dict
    from pretrain.init_weights import HFImportError, load_init_weights

    run_ranks(_flair_then_keepfit, 1, str(tmp_path), str(tiny_shards["public"]), str(tiny_shards["elite"]))
    flair = load_model_state_dict(tmp_path / "flair")
    start = load_model_state_dict(tmp_path / "keepfit" / "checkpoints" / "step00000000")  # before any update
    fresh = {k for k in start if k.startswith("auxiliary.")}
    assert fresh and all(k.startswith("auxiliary.revision_attention.") for k in fresh)  # added, not loaded
    assert set(start) - fresh == set(flair)  # everything else came from the FLAIR run, exactly
    for key, value in flair.items():
        torch.testing.assert_close(start[key], value, rtol=0, atol=0)
    # a keepfit run's own revision attention is left out when another run starts from it
    model = build_model(tiny_model_config())
    load_init_weights(model, tmp_path / "keepfit")
    latest = load_model_state_dict(tmp_path / "keepfit")
    assert set(latest) - set(model.state_dict()) == fresh
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, latest[key], rtol=0, atol=0)
    with pytest.raises(HFImportError, match="neither an export folder"):
        load_init_weights(model, tmp_path)  # not a run
