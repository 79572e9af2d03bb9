"""ViLReF: WSCL weights and false-negative mask against a hand-written reference, the queue's FIFO and
no-gradient semantics, the EMA, label extraction on real MM-Retinal captions, and the objective end to end."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import contrastive_loss, pack_multi_hot
from kernels.contrastive import LossOptions, reference_contrastive_loss
from kernels.contrastive.spec import unpack_multi_hot
from pretrain.model import add_auxiliary, build_model
from pretrain.objectives import build_objective
from pretrain.objectives.momentum import FeatureQueue, MomentumEncoder, ema_update, parameter_pairs
from pretrain.objectives.vilref import ViLReFObjective, extract_multi_hot
from tests.helpers import run_ranks, tiny_model_config

# label sets of 5 samples over 3 classes: a false negative (0, 1), a partial overlap (0/1 vs 2), an empty set
LABELS = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.uint8)


def hand_weights(labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """w_ij of the module docstring, one pair at a time."""
    n = labels.shape[0]
    w = torch.ones(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            a, b = labels[i].double(), labels[j].double()
            if i == j:
                continue
            if a.sum() > 0 and torch.equal(a, b):
                w[i, j] = 0.0
            else:
                cos = float(a @ b) / math.sqrt(float(a.sum() * b.sum())) if a.sum() * b.sum() > 0 else 0.0
                w[i, j] = 1.0 - alpha * cos
    return w


def hand_wscl(image, text, scale, labels, alpha, image_queue=None, text_queue=None, queue_labels=None):
    """Both directions of L_i = -s_ii + log sum_j w_ij exp(s_ij), written out with explicit key sets."""
    image, text = image.double(), text.double()
    keys_t = text if text_queue is None else torch.cat([text, text_queue.double()])
    keys_i = image if image_queue is None else torch.cat([image, image_queue.double()])
    all_labels = labels if queue_labels is None else torch.cat([labels, queue_labels])
    w = hand_weights(all_labels, alpha)[: labels.shape[0]]
    total = 0.0
    for queries, keys in ((image, keys_t), (text, keys_i)):
        s = scale * queries @ keys.T
        rows = [-s[i, i] + torch.log((w[i] * s[i].exp()).sum()) for i in range(queries.shape[0])]
        total = total + torch.stack(rows).mean()
    return total / 2


def test_hand_weights_values():
    w = hand_weights(LABELS, alpha=0.5)
    assert w[0, 1] == 0.0 and w[1, 0] == 0.0                   # identical sets: false negative, removed
    assert w[0, 2] == pytest.approx(1 - 0.5 / math.sqrt(2))     # cos({0}, {0,1}) = 1/sqrt(2)
    assert w[0, 4] == 1.0 and w[0, 3] == 1.0 and w[3, 3] == 1.0  # disjoint / empty: a full negative
    assert torch.all(w.diagonal() == 1.0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_wscl_kernel_matches_hand_reference(alpha):
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    loss = contrastive_loss(image, text, 10.0, labels=LABELS, exclude_false_negatives=True, weighting="cosine",
                            alpha=alpha)
    torch.testing.assert_close(loss.double(), hand_wscl(image, text, 10.0, LABELS, alpha), rtol=1e-5, atol=1e-6)


def test_wscl_with_queue_matches_hand_reference():
    g = torch.Generator().manual_seed(1)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)  # noqa: E731
    image, text, iq, tq = unit(5), unit(5), unit(3), unit(3)
    ql = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.uint8)  # one queued false negative of rows 0-1
    queue = FeatureQueue(4, 8, 3)
    queue.enqueue(iq, tq, ql)
    qi, qt, qlab = queue.contents()
    loss = contrastive_loss(image, text, 10.0, labels=LABELS, exclude_false_negatives=True, weighting="cosine",
                            alpha=0.5, image_queue=qi, text_queue=qt, queue_labels=qlab)
    expected = hand_wscl(image, text, 10.0, LABELS, 0.5, iq, tq, ql)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


# The abstract's three properties (its method section, with the equations, is not readable here; README).


def _unit(g: torch.Generator, n: int, dim: int = 8) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1).float()


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_identical_label_sets_never_repel(alpha):
    """Samples 0 and 1 share a label set: image 0's gradient does not depend on text 1 at all (no push from
    it in either direction), while text 2 (other labels) does push it."""
    g = torch.Generator().manual_seed(2)
    image, base_text = _unit(g, 5), _unit(g, 5)

    def image0_grad(text: torch.Tensor) -> torch.Tensor:
        v = image.clone().requires_grad_()
        loss = contrastive_loss(v, text, 10.0, labels=LABELS, exclude_false_negatives=True, weighting="cosine",
                                alpha=alpha)
        return torch.autograd.grad(loss, v)[0][0]

    moved_1, moved_2 = base_text.clone(), base_text.clone()
    moved_1[1], moved_2[2] = _unit(g, 1)[0], _unit(g, 1)[0]
    torch.testing.assert_close(image0_grad(moved_1), image0_grad(base_text), rtol=1e-5, atol=1e-7)
    assert (image0_grad(moved_2) - image0_grad(base_text)).abs().max() > 1e-3


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9])
def test_negatives_are_pushed_in_proportion_to_their_weight(alpha):
    """Two negatives at the same place that differ only in labels: the pull on them from query 0 is in the
    ratio of their weights, 1 : (1 - alpha cos) for label cosine 0 vs cos."""
    g = torch.Generator().manual_seed(3)
    query_image, query_text, negative = _unit(g, 1), _unit(g, 1), _unit(g, 1)
    text_keys = torch.cat([query_text, negative, negative]).requires_grad_()
    image_keys = _unit(g, 3)
    labels = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.uint8)  # cos(row 0, key 2) = 1/sqrt2
    loss = contrastive_loss(query_image, query_text, 10.0, labels=labels[:1], key_labels=labels,
                            image_keys=image_keys, text_keys=text_keys, offset=0, exclude_false_negatives=True,
                            weighting="cosine", alpha=alpha)
    grad = torch.autograd.grad(loss, text_keys)[0]
    ratio = grad[2].norm() / grad[1].norm()
    assert float(ratio) == pytest.approx(1 - alpha / math.sqrt(2), rel=1e-4)


def test_momentum_keys_refill_the_removed_negatives(tokenizer):
    """After a training step the queue holds the momentum encoders' embeddings of the batch with its label
    sets, and in the next loss they add exactly the keys whose label sets differ from a row's as negatives."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    objective = build_objective("vilref", queue_size=8, momentum=0.5, alpha=0.5)
    add_auxiliary(model, objective.auxiliary_modules(model))
    model.train()
    encoder, queue = model.auxiliary["momentum_encoder"], model.auxiliary["feature_queue"]
    encoder.eval()  # no dropout in the keys, so they can be recomputed below
    batch = _batch(tokenizer, CAPTIONS)
    objective(model, batch)
    with torch.no_grad():
        image_m = encoder.get_image_features(batch["image"])
        text_m = encoder.get_text_features(batch["input_ids"], batch["attention_mask"])
    qi, qt, ql = queue.contents()
    torch.testing.assert_close(qi, image_m)
    torch.testing.assert_close(qt, text_m)
    labels = extract_multi_hot(CAPTIONS)
    assert torch.equal(unpack_multi_hot(ql)[:, :objective.num_labels], labels.long())
    # row 0 ("drusen at the macula") loses its in-batch twin (row 1) as a negative and regains the queued
    # keys of other label sets: 2 of the 4 queued keys (rows 2, 3), while its twins (rows 0, 1) stay excluded
    from kernels.contrastive.spec import label_codes, pair_rules

    codes = label_codes(pack_multi_hot(labels))
    queued = label_codes(ql)
    i, j = torch.arange(4)[:, None], torch.arange(4)[None, :]
    _, in_batch = pair_rules(i, j, 0, codes, codes, LossOptions(exclude_false_negatives=True, weighting="cosine"))
    _, from_queue = pair_rules(i, j, 4, codes, queued, LossOptions(exclude_false_negatives=True, weighting="cosine"))
    assert int((in_batch[0] > 0).sum()) - 1 == 2  # negatives left in the batch (minus the true pair)
    assert (from_queue[0] > 0).tolist() == [False, False, True, True]


def test_queue_is_fifo():
    q = FeatureQueue(size=4, dim=2, num_labels=3)
    assert q.contents() is None
    rows = lambda a, b: torch.arange(a, b, dtype=torch.float32)[:, None].repeat(1, 2)  # noqa: E731
    labels = lambda n: torch.eye(3, dtype=torch.uint8)[torch.arange(n) % 3]  # noqa: E731
    q.enqueue(rows(0, 3), -rows(0, 3), labels(3))
    image, text, lab = q.contents()
    assert image[:, 0].tolist() == [0, 1, 2] and text[:, 0].tolist() == [0, -1, -2] and int(q.ptr) == 3
    q.enqueue(rows(3, 6), -rows(3, 6), labels(3))  # 3 goes to slot 3, then 4 and 5 overwrite the oldest (0, 1)
    image, _, lab = q.contents()
    assert image[:, 0].tolist() == [4, 5, 2, 3] and int(q.count) == 4 and int(q.ptr) == 2
    assert lab[:, 0].tolist() == [2, 4, 4, 1]  # bit words of labels 1, 2, 2, 0: they travel with their rows
    q.enqueue(rows(10, 16), -rows(10, 16), labels(6))  # larger than the queue: its last 4 rows survive
    assert sorted(q.contents()[0][:, 0].tolist()) == [12, 13, 14, 15]


def test_queue_keys_carry_no_gradient():
    q = FeatureQueue(size=4, dim=3, num_labels=2)
    feats = torch.randn(2, 3, requires_grad=True)
    q.enqueue(feats * 2, feats * 3, torch.ones(2, 2))
    image_q, text_q, _ = q.contents()
    assert not image_q.requires_grad and not text_q.requires_grad
    # even keys that do require grad get none through the loss: contrastive_loss detaches queues
    iq, tq = torch.randn(3, 3, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    image = torch.randn(2, 3, requires_grad=True)
    contrastive_loss(image, torch.randn(2, 3), 5.0, image_queue=iq, text_queue=tq).backward()
    assert iq.grad is None and tq.grad is None and image.grad is not None


def test_ema_update_by_hand():
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    encoder = MomentumEncoder(model)
    assert not any(p.requires_grad for p in encoder.parameters())
    pairs = parameter_pairs(model, encoder)
    assert len(pairs) == sum(1 for part in ("vision_model", "text_model", "visual_projection", "text_projection")
                             for _ in getattr(model, part).parameters())
    with torch.no_grad():
        for p, _ in pairs:
            p.add_(1.0)
    before = [q.detach().clone() for _, q in pairs]
    ema_update(model, encoder, m=0.75)
    for (p, q), old in zip(pairs, before):
        torch.testing.assert_close(q, 0.75 * old + 0.25 * p)


# ----------------------------------------------------------------------------- labels


def test_label_extraction_tricky_phrases():
    kb_vocab = __import__("shards.knowledge", fromlist=["load_knowledge"]).load_knowledge().vocabulary
    texts = ["No signs of glaucoma.", "No glaucoma. Drusen and haemorrhages.", "a normal fundus", ""]
    y = extract_multi_hot(texts)
    assert y.shape == (4, len(kb_vocab)) and y.dtype == torch.uint8
    names = [sorted(kb_vocab[i] for i in row.nonzero().flatten().tolist()) for row in y]
    assert names == [[], ["drusen", "hemorrhages", "no glaucoma"], ["normal"], []]


def _captions(reference_dir, pattern: str) -> list[str]:
    import pandas as pd

    frame = pd.read_csv(reference_dir / "pretraining" / "39_MM_Retinal_dataset.csv")
    found = [c for c in frame["caption"].astype(str) if pattern in c.lower()]
    assert found, pattern
    return found


def test_label_extraction_on_real_mm_retinal_captions(reference_dir):
    from shards.knowledge import load_knowledge

    kb = load_knowledge()
    names = lambda text: kb.extract_labels(text)  # noqa: E731
    # a post-negated finding ("... detachment was not evident") is dropped, the finding before it is kept
    for caption in _captions(reference_dir, "detachment was not evident"):
        assert "retinal detachment" not in names(caption) and "hemorrhages" in names(caption), caption
    # "without macular involvement" negates the macula, not the detachment before it
    for caption in _captions(reference_dir, "retinal detachment without macular involvement"):
        assert "retinal detachment" in names(caption), caption
    # "No abnormalities are seen" reads as a normal fundus
    for caption in _captions(reference_dir, "no abnormalities"):
        assert "normal" in names(caption), caption
    # the multi-hot rows are exactly the extracted names
    captions = _captions(reference_dir, "hemorrhage")[:20]
    y = extract_multi_hot(captions)
    for caption, row in zip(captions, y):
        assert row.nonzero().flatten().tolist() == kb.label_ids(names(caption))


# ----------------------------------------------------------------------------- objective


def _batch(tokenizer, captions: list[str], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    return {"image": torch.randn(len(captions), 3, 64, 64, generator=g), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"], "text": captions,
            "multi_hot": torch.zeros(len(captions), 5, dtype=torch.uint8),
            "category_ids": torch.full((len(captions),), -1)}


CAPTIONS = ["drusen at the macula", "drusen at the macula", "no glaucoma", "hemorrhages and drusen"]


def test_objective_matches_kernel_and_fills_queue(tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    objective = build_objective("vilref", queue_size=6, momentum=0.5, alpha=0.5)
    assert isinstance(objective, ViLReFObjective)
    add_auxiliary(model, objective.auxiliary_modules(model))
    model.train()
    batch = _batch(tokenizer, CAPTIONS)
    terms = objective(model, batch)
    assert list(terms) == ["contrastive"] and torch.isfinite(terms["contrastive"])
    assert int(model.auxiliary["feature_queue"].count) == 4  # the first step had no queue, then enqueued its 4 keys
    terms["contrastive"].backward()
    assert model.visual_projection.proj.weight.grad is not None
    assert all(p.grad is None for p in model.auxiliary["momentum_encoder"].parameters())
    # the second step sees the queue; eval mode (no dropout) makes the embedding reproducible for the check
    model.eval()
    with torch.no_grad():
        loss = objective(model, batch)["contrastive"]
        out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
        qi, qt, ql = model.auxiliary["feature_queue"].contents()
        labels = extract_multi_hot(CAPTIONS)
        expected = contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"], labels=labels,
                                    exclude_false_negatives=True, weighting="cosine", alpha=0.5,
                                    image_queue=qi, text_queue=qt, queue_labels=ql)
    torch.testing.assert_close(loss, expected)
    assert int(model.auxiliary["feature_queue"].count) == 4  # eval calls never enqueue


def test_gradients_use_the_queue_as_the_loss_saw_it(tokenizer):
    """Once the queue is full, each step's enqueue overwrites keys and label sets between the loss and the
    backward; the gradient must still be that of the loss against the queue as it stood (the float64
    reference on a snapshot). With the labels read back after the overwrite, weights left [0, 1] and the
    ablation's ViLReF weights turned NaN."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    objective = build_objective("vilref", queue_size=4, momentum=0.5, alpha=0.5)
    add_auxiliary(model, objective.auxiliary_modules(model))
    model.train()
    objective(model, _batch(tokenizer, CAPTIONS))  # fills the queue
    batch = _batch(tokenizer, ["glaucoma", "no glaucoma", "drusen and glaucoma", "a normal fundus"], seed=1)
    queue = model.auxiliary["feature_queue"]
    qi, qt = queue.image.clone(), queue.text.clone()
    ql = unpack_multi_hot(queue.labels.clone())[:, :objective.num_labels]
    torch.manual_seed(5)  # the same dropout in both forwards
    loss = objective(model, batch)["contrastive"]
    assert not torch.equal(unpack_multi_hot(queue.labels)[:, :objective.num_labels], ql)  # really overwritten
    weight = model.visual_projection.proj.weight
    got = torch.autograd.grad(loss, weight)[0]
    torch.manual_seed(5)
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
    ref = reference_contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"],
                                     labels=extract_multi_hot(batch["text"]).long(),
                                     opts=LossOptions(exclude_false_negatives=True, weighting="cosine", alpha=0.5),
                                     image_queue=qi, text_queue=qt, queue_labels=ql.long())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.double(), torch.autograd.grad(ref, weight)[0].double(), rtol=1e-4, atol=1e-6)


def test_objective_options_are_checked(tokenizer):
    with pytest.raises(ValueError, match="weighting"):
        ViLReFObjective(weighting="dice")
    with pytest.raises(ValueError, match="label_source"):
        ViLReFObjective(label_source="csv")
    model = build_model(tiny_model_config())
    with pytest.raises(RuntimeError, match="no auxiliary module .feature_queue."):
        ViLReFObjective()(model, _batch(tokenizer, CAPTIONS))


# ----------------------------------------------------------------------------- 2-process DeepSpeed (CPU, gloo)

STEPS, SAVE_AT = 6, 3
CAPTION_POOL = ["drusen at the macula", "no glaucoma", "hemorrhages and drusen", "glaucoma", "microaneurysms",
                "macular edema", "a normal fundus", "neovascularization", "drusen and glaucoma"]


def _step_batch(tokenizer, rank: int, step: int) -> dict:
    """A different batch on every rank and step, so the queue's keys and label sets change as it wraps."""
    start = 4 * rank + 3 * step
    captions = [CAPTION_POOL[(start + i) % len(CAPTION_POOL)] for i in range(4)]
    return _batch(tokenizer, captions, seed=100 * step + rank)


def _vilref_engine(stage: int):
    from pretrain.engine import EngineConfig, build_engine

    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    objective = ViLReFObjective(queue_size=12, momentum=0.5)  # 12 slots, 8 keys per step: wraps mid-batch
    add_auxiliary(model, objective.auxiliary_modules(model))
    engine = build_engine(model, EngineConfig(zero_stage=stage, micro_batch_size=4, lr=5e-3, warmup_steps=1,
                                              total_steps=STEPS))[0]
    return engine, objective


def _state(engine) -> dict[str, torch.Tensor]:
    """Every parameter (gathered under ZeRO-3) and buffer: online towers, momentum copies, the queue."""
    import deepspeed

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        state = {n: p.detach().clone() for n, p in module.named_parameters()}
    state.update({n: b.detach().clone() for n, b in module.named_buffers()})
    return state


def _worker(rank: int, world: int, stages: tuple[int, ...], run_root: str) -> dict:
    import deepspeed
    from transformers import AutoTokenizer

    from pretrain.checkpoint import load_checkpoint, save_checkpoint
    from pretrain.engine import init_distributed_env, train_step
    from pretrain.objectives import weighted_total
    from pretrain.towers import resolve_text_path

    init_distributed_env()
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_path("offline-minilm"))
    result = {}
    for stage in stages:
        run_dir = f"{run_root}/zero{stage}"
        engine, objective = _vilref_engine(stage)

        def loss_fn(eng, b):
            terms = objective(eng.module, b)
            return {"loss": weighted_total(terms, {}), **terms}

        losses = []
        for step in range(STEPS):
            losses.append(train_step(engine, loss_fn, _step_batch(tokenizer, rank, step))["loss"])
            if step + 1 == SAVE_AT:
                save_checkpoint(engine, run_dir, SAVE_AT)
        final = _state(engine)
        module = engine.module
        online = [p for part in ("vision_model", "text_model", "visual_projection", "text_projection")
                  for p in getattr(module, part).parameters()]
        momentum = list(module.auxiliary["momentum_encoder"].parameters())
        with deepspeed.zero.GatheredParameters(online + momentum, modifier_rank=None):
            before = [q.detach().clone() for q in momentum]
            theta = [p.detach().clone() for p in online]
        ema_update(module, module.auxiliary["momentum_encoder"], 0.25)  # partition-wise under ZeRO-3
        with deepspeed.zero.GatheredParameters(momentum, modifier_rank=None):
            ema_error = max(float((q - (0.25 * b + 0.75 * t)).abs().max()) for q, b, t in zip(momentum, before, theta))
        # a fresh engine resumed from step 3 replays steps 4-6
        resumed, objective = _vilref_engine(stage)
        client_state = load_checkpoint(resumed, run_dir, "auto")
        resumed_losses = [train_step(resumed, loss_fn, _step_batch(tokenizer, rank, step))["loss"]
                          for step in range(client_state["step"], STEPS)]
        result[stage] = {"losses": losses, "ema_error": ema_error, "final": final, "resumed_final": _state(resumed),
                         "resumed_losses": resumed_losses, "resumed_from": client_state["step"]}
    return result


@pytest.mark.multiproc
def test_two_processes_zero1_and_zero3_train_and_resume_exactly(tmp_path):
    stages = (1, 3)
    results = run_ranks(_worker, 2, stages, str(tmp_path))
    for stage in stages:
        for res in results:
            r = res[stage]
            assert all(math.isfinite(x) for x in r["losses"]), (stage, r["losses"])
            assert r["losses"][-1] < r["losses"][0], (stage, r["losses"])
            assert r["ema_error"] < 1e-6, stage
            assert int(r["final"]["auxiliary.feature_queue.count"]) == 12
            # exact resume: the same losses and every parameter, momentum copy and queue entry bit for bit
            assert r["resumed_from"] == SAVE_AT and r["resumed_losses"] == r["losses"][SAVE_AT:], stage
            assert r["final"].keys() == r["resumed_final"].keys()
            for name, value in r["final"].items():
                assert torch.equal(value, r["resumed_final"][name]), (stage, name)
        # every rank enqueued the same gathered global batch
        torch.testing.assert_close(results[0][stage]["final"]["auxiliary.feature_queue.image"],
                                   results[1][stage]["final"]["auxiliary.feature_queue.image"])
