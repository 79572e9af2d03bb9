"""Ranks whose run folders are not shared (machines without shared storage): each rank here gets its own run
folder, as on two machines. pretrain.folder_groups finds the groups by writing into the folders; a ZeRO-2
checkpoint is complete only on the S3 server (moto on loopback), each folder's leader having uploaded what only
its folder holds; a restart on fresh folders resumes every rank from it exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.checkpoint_files import MANIFEST
from shards.storage import list_sizes, read_bytes
from tests.helpers import run_ranks

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


class TinyTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Dropout(0.1), nn.Linear(24, 8))
        self.text = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 8))
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / 0.07)]))


def _loss(model: TinyTowers, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from kernels.contrastive import contrastive_loss

    img = nn.functional.normalize(model.image(batch["images"]), dim=-1)
    txt = nn.functional.normalize(model.text(batch["texts"]), dim=-1)
    loss = contrastive_loss(img, txt, model.logit_scale.exp())
    return {"loss": loss, "contrastive": loss.detach()}


def _batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(6, 12, generator=g)
    return {"images": x + 0.1 * torch.randn(6, 12, generator=g), "texts": x}


def _engine(seed: int):
    from pretrain.engine import EngineConfig, build_engine

    torch.manual_seed(seed)
    cfg = EngineConfig(zero_stage=2, micro_batch_size=6, lr=1e-2, warmup_steps=1, total_steps=10)
    return build_engine(TinyTowers(), cfg)[0]


def _steps(engine, rank: int, start: int, stop: int) -> list[float]:
    from pretrain.engine import train_step

    return [float(train_step(engine, _loss, _batch(rank, step))["loss"]) for step in range(start, stop)]


def _params(engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def _folders_worker(rank: int, world: int, root: str, layout: list[str]) -> dict:
    """folder_leaders over the folders `layout` gives the ranks; then a training loop on them without run.remote."""
    from pretrain.engine import init_distributed_env
    from pretrain.folder_groups import folder_leaders
    from pretrain.loop import RunConfig, TrainingLoop

    init_distributed_env()
    run_dir = Path(root) / layout[rank] / "run"
    result = {"leaders": folder_leaders(run_dir), "error": None}
    engine = _engine(0)
    try:
        TrainingLoop(engine, engine.optimizer, RunConfig(dir=str(run_dir), steps=2, save_every=0))
    except ValueError as err:
        result["error"] = str(err)
    return result


def _spread_worker(rank: int, world: int, root: str, remote: str) -> dict:
    """Two steps, a checkpoint at step 2 from two folders, two more steps; then fresh folders resume from S3."""
    from pretrain.checkpoint import load_checkpoint, save_checkpoint, save_run_config
    from pretrain.engine import init_distributed_env
    from pretrain.folder_groups import folder_leaders

    init_distributed_env()
    run_dir = Path(root) / f"machine{rank}" / "run"
    leaders = folder_leaders(run_dir)
    engine = _engine(0)
    save_run_config(run_dir, {"engine": {"zero_stage": 2}})
    result = {"leaders": leaders, "losses": _steps(engine, rank, 0, 2)}
    save_checkpoint(engine, run_dir, 2, remote=remote, leaders=leaders)
    result["local_files"] = sorted(f.name for f in (run_dir / "checkpoints" / "step00000002").iterdir())
    result["losses"] += _steps(engine, rank, 2, 4)
    result["params"] = _params(engine)

    fresh = Path(root) / f"fresh{rank}" / "run"  # the restart lands on machines with empty folders
    engine = _engine(1)
    state = load_checkpoint(engine, fresh, "auto", remote, folder_leaders(fresh))
    result["step"] = state["step"]
    result["fetched"] = sorted(f.name for f in (fresh / "checkpoints" / "step00000002").iterdir())
    result["resumed_losses"] = _steps(engine, rank, 2, 4)
    result["resumed_params"] = _params(engine)
    return result


@pytest.mark.parametrize("layout, leaders", [(["a", "a"], [0, 0]), (["a", "b"], [0, 1]),
                                             (["a", "b", "a"], [0, 1, 0])])
def test_folder_groups_are_found_by_writing(tmp_path, layout, leaders):
    results = run_ranks(_folders_worker, len(layout), str(tmp_path), layout)
    assert [r["leaders"] for r in results] == [leaders] * len(layout)
    assert not list(tmp_path.rglob(".folder-probe"))
    for r in results:
        if len(set(layout)) == 1:
            assert r["error"] is None
        else:  # a checkpoint could never be complete anywhere: refused before any step
            assert "not one folder shared by every rank" in r["error"] and "run.remote" in r["error"], r["error"]


def test_checkpoint_from_two_folders_is_complete_on_s3_and_resumes_exactly(tmp_path, bucket):
    remote = f"s3://{bucket}/run"
    results = run_ranks(_spread_worker, 2, str(tmp_path), remote)
    assert [r["leaders"] for r in results] == [[0, 1], [0, 1]]

    # each folder holds only its ranks' part; the union is on S3, listed by the manifest
    local = [set(r["local_files"]) for r in results]
    partitions = {name for name in local[0] | local[1] if name.endswith("optim_states.pt")}
    assert len(partitions) == 2 and not (partitions <= local[0]) and not (partitions <= local[1])
    uploaded = list_sizes(f"{remote}/checkpoints/step00000002")
    manifest = json.loads(read_bytes(f"{remote}/checkpoints/step00000002/{MANIFEST}"))["files"]
    assert set(manifest) == (local[0] | local[1]) - {MANIFEST}
    assert set(uploaded) == set(manifest) | {MANIFEST}
    assert all(uploaded[name] == entry["size"] for name, entry in manifest.items())
    assert read_bytes(f"{remote}/checkpoints/latest").decode().strip() == "step00000002"

    for r in results:  # every fresh folder got the whole tag; every rank continues exactly
        assert r["step"] == 2
        assert set(r["fetched"]) == set(manifest) | {MANIFEST}
        torch.testing.assert_close(torch.tensor(r["resumed_losses"]), torch.tensor(r["losses"][2:]), rtol=1e-6,
                                   atol=1e-7)
        for name, p in r["params"].items():
            torch.testing.assert_close(r["resumed_params"][name], p, rtol=1e-6, atol=1e-7, msg=name)
