"""The retina-shards CLI end to end on synthetic data, the way `make demo` drives it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from tests.shards.helpers import write_flair_csv


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "shards", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    cli("-q", "synth", "--out", str(out), "--public", "24", "--elite", "12", "--eval", "12",
        "--image-size", "64")
    return out


def test_synth_build_verify_inspect_stats(synth_dir, tmp_path):
    shards = tmp_path / "elite"
    result = cli("-q", "build", "--out", str(shards), "--source", f"mm-retinal:{synth_dir / 'images' / 'MM-Retinal'}",
                 "--shard-size", "5", "--image-size", "48", "--workers", "2")
    assert "written 12 + rejected 0 + duplicates 0" in result.stdout
    assert cli("verify", str(shards)).stdout.strip().endswith("OK")
    inspect = cli("-q", "inspect", str(shards), "-n", "2").stdout
    assert inspect.count("MM-Retinal") >= 2 and "caption" in inspect
    stats = json.loads(cli("-q", "stats", str(shards), "--json").stdout)
    assert stats["samples"] == 12 and set(stats["by_modality"]) <= {"CFP", "FFA", "OCT"}
    assert stats["with_caption"] == 12
    plot = tmp_path / "stats.png"
    cli("-q", "stats", str(shards), "--plot", str(plot))
    assert plot.stat().st_size > 1000
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    assert sum(1 for _ in wds.WebDataset(urls, shardshuffle=False)) == 12


def test_public_dataframes_build(synth_dir, tmp_path):
    frames = synth_dir / "dataframes" / "pretraining"
    sources = [arg for f in sorted(frames.glob("9*_SYNTH_*.csv"))
               for arg in ("--source", f"flair:{f}:{synth_dir / 'images'}")]
    out = tmp_path / "public"
    cli("-q", "build", "--out", str(out), *sources, "--shard-size", "10", "--split", "train=80,val=20")
    index = json.loads((out / "index.json").read_text())
    assert index["totals"]["written"] + index["totals"]["rejected"] + index["totals"]["duplicates"] == 24
    assert index["totals"]["written"] >= 22  # synth writes a few deliberately empty category rows, not bad images
    assert cli("verify", str(out)).returncode == 0


def test_verify_fails_on_a_damaged_shard(synth_dir, tmp_path):
    out = tmp_path / "eval"
    cli("-q", "build", "--out", str(out), "--source",
        f"flair:{synth_dir / 'dataframes' / 'transferability' / 'classification'}:{synth_dir / 'images'}",
        "--split", "test=100")
    shard = sorted(out.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-2048])
    result = cli("verify", str(out), check=False)
    assert result.returncode == 1 and "FAILED" in result.stdout


def test_missing_column_exits_2_naming_file_and_column(tmp_path):
    bad = tmp_path / "frame.csv"
    bad.write_text(",image,atributes\n0,a.jpg,[]\n", encoding="utf-8")
    result = cli("build", "--out", str(tmp_path / "o"), "--source", f"flair:{bad}", check=False)
    assert result.returncode == 2
    assert "frame.csv" in result.stderr and "categories" in result.stderr


def test_render_stand_in_pixels_for_a_dataframe(tmp_path):
    frame = write_flair_csv(tmp_path / "03_TOY.csv", [("03_TOY/a.jpg", "[]", "['glaucoma']"),
                                                     ("03_TOY/b.png", "[]", "['drusen']")])
    root = tmp_path / "images"
    assert "rendered 2 images" in cli("render", str(frame), "--image-root", str(root), "--image-size", "32").stdout
    out = tmp_path / "shards"
    cli("-q", "build", "--out", str(out), "--source", f"flair:{frame}:{root}")
    assert json.loads((out / "index.json").read_text())["totals"]["written"] == 2
