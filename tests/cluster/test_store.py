"""The embedding store (cluster.store) is only created in a missing or empty folder or over a store of ours:
zarr's mode "w" deletes the whole folder first, so a run folder or any other folder given as --out is refused
and left byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.store import create_store, open_store


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def create(path: Path, fingerprint: str = "a"):
    return create_store(path, count=5, chunk=2, embed_dim=4, num_labels=3, attrs={"fingerprint": fingerprint})


def test_a_run_folder_or_a_foreign_zarr_is_refused_untouched(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step00000002").mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  dir: run\n")
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    for folder, shown in ((run, "checkpoints, config.yaml"), (other, "zarr.json")):
        before = snapshot(folder)
        with pytest.raises(ValueError, match=f"--out {folder} is not empty .* holds {shown}"):
            create(folder)
        assert snapshot(folder) == before


def test_new_empty_and_own_stores_are_written(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    for path in (tmp_path / "new.zarr", empty):
        create(path)
        assert open_store(path).attrs["fingerprint"] == "a"
    create(empty, fingerprint="b")  # a different store of ours starts over
    assert open_store(empty).attrs["fingerprint"] == "b" and open_store(empty).attrs["complete"] is False
