"""`retina-shards build --out DIR` writes only into a missing or empty folder or one of its own shard sets
(shards.out_folder): any other folder is refused with exit 2 and stays byte-identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shards.build import BuildConfig, build
from shards.out_folder import ForeignFolderError
from tests.shards.helpers import fundus_like, save, write_flair_csv


@pytest.fixture
def source(tmp_path) -> str:
    root = tmp_path / "images"
    for i in range(3):
        save(fundus_like(i), root / f"img{i}.jpg", quality=90)
    frame = write_flair_csv(tmp_path / "01_TOY.csv", [(f"img{i}.jpg", "[]", "['glaucoma']") for i in range(3)])
    return f"flair:{frame}:{root}"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under folder (folders as None), so an added .build/ shows up as well as a changed file."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def cli_build(out: Path, source: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", "-q", "build", "--out", str(out), "--source", source,
                           "--workers", "1", "--image-size", "32"], capture_output=True, text=True, timeout=300)


def foreign(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "index.json").write_text('{"pages": [1, 2]}\n')  # someone else's index
    (folder / "train-000000.tar").write_bytes(b"not ours" * 100)  # named like a stale shard of ours
    (folder / "x.tar").write_bytes(b"also not ours")
    return folder


def a_run(folder: Path) -> Path:
    (folder / "checkpoints" / "step00000002").mkdir(parents=True)
    (folder / "checkpoints" / "latest").write_text("step00000002")
    (folder / "config.yaml").write_text("run:\n  dir: run\n")
    return folder


@pytest.mark.parametrize("make", [foreign, a_run])
def test_a_foreign_folder_is_refused_and_left_byte_identical(tmp_path, source, make):
    out = make(tmp_path / "out")
    before = snapshot(out)
    result = cli_build(out, source)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"retina-shards build: error: --out {out} is not empty and is not a shard set")
    assert ("notes.txt" if make is foreign else "config.yaml") in error
    assert snapshot(out) == before


def test_a_file_as_out_is_refused(tmp_path, source):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(ForeignFolderError, match="is not a folder"):
        build(BuildConfig(out=out, sources=[source], workers=1, progress=False))
    assert out.read_text() == "a file"


def test_missing_empty_and_own_shard_sets_are_built_into(tmp_path, source):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "missing" / "nested", empty):
        assert build(BuildConfig(out=out, sources=[source], workers=1, progress=False))["totals"]["written"] == 3
        assert (out / ".build" / "claim.json").is_file()
    # our own finished set, with a file of the user's beside it: rebuilt, the file kept
    (empty / "README.txt").write_text("kept\n")
    (empty / ".build" / "claim.json").unlink()  # recognised by its index.json alone
    index = build(BuildConfig(out=empty, sources=[source], workers=1, progress=False, shard_size=2))
    assert [s["name"] for s in index["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in empty.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert (empty / "README.txt").read_text() == "kept\n"


@pytest.mark.parametrize("leftover", ["claim", "legacy"])
def test_an_interrupted_build_of_ours_is_resumed(tmp_path, source, leftover):
    out = tmp_path / "out"
    (out / ".build").mkdir(parents=True)
    if leftover == "claim":  # a build killed before it wrote its index
        (out / ".build" / "claim.json").write_text(json.dumps({"format": "retinascale-shards"}))
    else:  # a build from before claim files: only the builder's own files in .build/
        (out / ".build" / "hashes.jsonl").write_text("")
        (out / ".build" / "train-000000.tar.json").write_text("{}")
    (out / "train-000000.tar.partial").write_bytes(b"torn")
    result = cli_build(out, source)
    assert result.returncode == 0, result.stderr
    assert "written 3" in result.stdout and not (out / "train-000000.tar.partial").exists()


def test_a_foreign_build_folder_is_not_ours(tmp_path, source):
    out = tmp_path / "out"
    (out / ".build" / "debug").mkdir(parents=True)  # e.g. another tool's .build/
    (out / "Package.swift").write_text("// swift\n")
    before = snapshot(out)
    with pytest.raises(ForeignFolderError, match=r"\.build, Package\.swift"):
        build(BuildConfig(out=out, sources=[source], workers=1, progress=False))
    assert snapshot(out) == before
