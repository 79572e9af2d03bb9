"""Model writers replace only an empty folder or a model folder (pretrain.model_folders): export-hf and
import-hf --overwrite and text-pretrain's OUT never delete a run, a shard set or a folder of someone else's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.hf.export import ExportError, write_atomically

REPO = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def fill(tmp: Path) -> None:
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(b"new weights")


def make(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    files = {"run": ["config.yaml", "checkpoints/latest", "metrics.jsonl"],
             "shards": ["index.json", "train-000000.tar"],
             "foreign": ["notes.txt", "photo.jpg"],
             # a model folder that also holds a run is still a run
             "model_in_run": ["config.json", "model.safetensors", "config.yaml", "checkpoints/latest"]}[kind]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{kind} {name}\n")
    return folder


@pytest.mark.parametrize("kind", ["run", "shards", "foreign", "model_in_run"])
def test_overwrite_refuses_a_folder_that_is_not_a_model(tmp_path, kind):
    out = make(tmp_path, kind)
    before = snapshot(out)
    with pytest.raises(ExportError, match=f"{out.name}' is not a model folder .*holds "):
        write_atomically(out, fill, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no temporary folder left beside it


def test_overwrite_replaces_an_empty_or_model_folder(tmp_path):
    out = tmp_path / "export"
    write_atomically(out, fill, overwrite=False)
    (out / "model.safetensors").write_bytes(b"old weights")
    write_atomically(out, fill, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == b"new weights"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_atomically(empty, fill, overwrite=True)
    assert (empty / "config.json").is_file()


def test_text_pretrain_refuses_an_out_it_must_not_replace_before_training(tmp_path):
    out = make(tmp_path, "shards")
    before = snapshot(out)
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    result = subprocess.run([sys.executable, "-m", "pretrain", "text-pretrain", "--config",
                             "pretrain/configs/keepfit_v2_text_cpu.yaml", "--run.dir", str(tmp_path / "run"),
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is not a model folder (it holds index.json, train-000000.tar)" in result.stderr
    assert "starting fresh" not in result.stdout and not (tmp_path / "run" / "checkpoints").exists()
    assert snapshot(out) == before
