"""Build shards from slices of the real reference dataframes, with stand-in pixels at their real paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import webdataset as wds

from shards.build import BuildConfig, build
from shards.synth import render_for_dataframe
from shards.verify import verify

ROWS = 8
SLICES = {  # reference file -> source kind
    "pretraining/27_BRSET.csv": "flair",
    "pretraining/06_DEN.csv": "flair",  # free-text clinical notes as categories
    "pretraining/04_RFMid.csv": "flair",  # paths with spaces and dots
    "pretraining/39_MM_Retinal_dataset.csv": "captions",
    "ffa/FFA.csv": "mm-retinal",
    "transferability/classification/13_FIVES.csv": "flair",
}


def head_of(src: Path, dst: Path, rows: int) -> Path:
    """The header and first rows of a real table, byte for byte as the csv module round-trips them."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, newline="", encoding="utf-8") as fin, open(dst, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        for number, row in enumerate(csv.reader(fin)):
            if number > rows:
                break
            writer.writerow(row)
    return dst


def test_real_layouts_build_end_to_end(reference_dir, tmp_path):
    images = tmp_path / "images"
    sources = []
    for relative, kind in SLICES.items():
        frame = head_of(reference_dir / relative, tmp_path / "frames" / relative, ROWS)
        assert render_for_dataframe(frame, images, image_size=48) == ROWS
        sources.append(f"{kind}:{frame}:{images}")
    out = tmp_path / "shards"
    index = build(BuildConfig(out=out, sources=sources, shard_size=16, workers=2, progress=False))
    totals = index["totals"]
    assert totals["rows_read"] == ROWS * len(SLICES)
    assert totals["written"] + totals["rejected"] + totals["duplicates"] == totals["rows_read"]
    assert totals["rejected"] == 0
    assert verify(out, progress=False) == []

    metas = [json.loads(s["json"]) for s in wds.WebDataset([str(out / s["name"]) for s in index["shards"]],
                                                           shardshuffle=False)]
    by_dataset = {}
    for meta in metas:
        by_dataset.setdefault(meta["dataset"], []).append(meta)
    assert {"27_BRSET", "06_DEN", "04_RFMid", "39_MM_Retinal_dataset", "MM-Retinal", "13_FIVES"} == set(by_dataset)
    vocab = index["label_vocabulary"]
    brset_labels = {vocab[i] for m in by_dataset["27_BRSET"] for i in m["labels"]}
    assert {"normal optic disc", "abnormal optic disc", "normal vessels", "increased cup disc"} <= brset_labels
    assert all(m["modality"] == "FFA" and m["labels_from"] == "caption" for m in by_dataset["MM-Retinal"])
    assert all(m["labels"] for m in by_dataset["13_FIVES"])
    assert all(m["path"].startswith("04_RFMiD/1. Original Images/a. Training Set/") for m in by_dataset["04_RFMid"])
