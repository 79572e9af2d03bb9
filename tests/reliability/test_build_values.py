"""`retina-shards build` refuses nonsensical numbers before any work, naming the flag, and an empty source names
its file (issue 14)."""

from __future__ import annotations

import pytest

from shards import cli
from tests.shards.helpers import fundus_like, save, write_flair_csv


@pytest.fixture
def source(tmp_path) -> str:
    save(fundus_like(0), tmp_path / "img" / "a.jpg")
    frame = write_flair_csv(tmp_path / "frame.csv", [("a.jpg", "[]", "['glaucoma']")])
    return f"flair:{frame}:{tmp_path / 'img'}"


@pytest.mark.parametrize("flags, message", [
    (["--split", "train=110,val=-10"], "--split 'train=110,val=-10': the percentage of 'train' must be between 0 and"),
    (["--split", "train=90,val=-10,test=20"], "the percentage of 'val' must be between 0 and 100"),
    (["--split", "train=abc"], "--split 'train=abc': expected name=percent"),
    (["--split", "train=nan,val=0"], "the percentage of 'train' must be between 0 and 100"),
    (["--split", "train=50,train=50"], "a split is named twice"),
    (["--workers", "-3"], "--workers must be at least 1 (1 builds in this process), got -3"),
    (["--max-pixels", "0"], "--max-pixels must be a positive pixel count, got 0"),
    (["--shard-size", "0"], "--shard-size must be at least 1"),
], ids=["split-negative", "split-negative-middle", "split-text", "split-nan", "split-twice", "workers", "max-pixels",
        "shard-size"])
def test_nonsense_numbers_are_refused_before_anything_is_written(tmp_path, capsys, source, flags, message):
    out = tmp_path / "out"
    code = cli.main(["-q", "build", "--out", str(out), "--source", source, *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("retina-shards build: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_same_build_with_sane_numbers_works(tmp_path, capsys, source):
    code = cli.main(["-q", "build", "--out", str(tmp_path / "out"), "--source", source, "--split", "train=90,val=10",
                     "--workers", "1", "--max-pixels", "5000"])
    assert code == 0 and "written 1 + rejected 0" in capsys.readouterr().out


def test_a_header_only_csv_is_an_error_naming_it(tmp_path, capsys):
    empty = write_flair_csv(tmp_path / "empty.csv", [])
    code = cli.main(["-q", "build", "--out", str(tmp_path / "out"), "--source", f"flair:{empty}:{tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"retina-shards build: error: {empty}: no rows")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out" / "index.json").exists()
