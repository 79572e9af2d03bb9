"""The shard builder end to end on real files: bad inputs, counts, determinism, webdataset, verify."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from shards.build import BuildConfig, build
from shards.index import shard_urls
from shards.tarshard import file_sha256
from shards.verify import verify
from tests.shards.helpers import fundus_like, jpeg_bytes, png16, save, write_caption_csv, write_flair_csv


@pytest.fixture
def messy_tree(tmp_path) -> dict:
    """A FLAIR dataframe and a caption table over images exercising every bad-input case."""
    root = tmp_path / "data"
    save(fundus_like(1), root / "01_TOY" / "good.jpg", quality=90)
    save(fundus_like(2).convert("CMYK"), root / "01_TOY" / "cmyk.jpg")
    save(png16(3), root / "01_TOY" / "sixteen.png")
    save(fundus_like(4).convert("P"), root / "01_TOY" / "palette.png")
    save(fundus_like(5).convert("RGBA"), root / "01_TOY" / "alpha.png")
    (root / "01_TOY" / "empty.jpg").write_bytes(b"")
    (root / "01_TOY" / "truncated.jpg").write_bytes(jpeg_bytes(6, (64, 64))[:1500])
    (root / "01_TOY" / "corrupt.jpg").write_bytes(b"GIF89a-not-really" * 10)
    save(Image.new("L", (300, 300)), root / "01_TOY" / "bomb.png")
    shutil.copy(root / "01_TOY" / "good.jpg", root / "01_TOY" / "copy_of_good.jpg")
    flair = write_flair_csv(tmp_path / "frames" / "01_TOY.csv", [
        ("01_TOY/good.jpg", "[]", "['Drusens', 'haemorrhages.']"),
        ("01_TOY/cmyk.jpg", "['noisy']", "['glaucoma']"),
        ("01_TOY/sixteen.png", "[]", "['no glaucoma']"),
        ("01_TOY/palette.png", "[]", "['']"),
        ("01_TOY/alpha.png", "[]", "['mild nonproliferative retinopathy']"),
        ("01_TOY/missing.jpg", "[]", "['glaucoma']"),
        ("01_TOY/empty.jpg", "[]", "['glaucoma']"),
        ("01_TOY/truncated.jpg", "[]", "['glaucoma']"),
        ("01_TOY/corrupt.jpg", "[]", "['glaucoma']"),
        ("01_TOY/bomb.png", "[]", "['glaucoma']"),
        ("../escape.jpg", "[]", "['glaucoma']"),
        ("01_TOY/good.jpg", "[]", "['drusen']"),           # the same row again
        ("01_TOY/copy_of_good.jpg", "[]", "['drusen']"),   # the same bytes under another name
    ])
    captions = write_caption_csv(tmp_path / "frames" / "caps" / "elite.csv", [
        ("01_TOY/palette.png", "Palette image, no glaucoma."),   # content duplicate across sources
        ("01_TOY/sixteen.png", ""),                              # empty caption
    ])
    save(fundus_like(7), root / "02_CAP" / "x.jpg")
    with open(captions, "a", encoding="utf-8") as fh:
        fh.write("2,02_CAP/x.jpg,Soft exudates without haemorrhages.\n")
    return {"root": root, "sources": [f"flair:{flair}:{root}", f"captions:{captions}:{root}"],
            "tmp": tmp_path}


def run_build(tree, out: Path, **kwargs) -> dict:
    options = dict(shard_size=3, image_size=32, max_pixels=50_000, workers=1, progress=False)
    options.update(kwargs)
    return build(BuildConfig(out=out, sources=tree["sources"], **options))


def test_bad_inputs_are_counted_and_reasons_logged(messy_tree):
    out = messy_tree["tmp"] / "shards"
    index = run_build(messy_tree, out)
    totals = index["totals"]
    assert totals == {**totals, "rows_read": 16, "written": 6, "rejected": 7, "duplicates": 3}
    assert totals["rows_read"] == totals["written"] + totals["rejected"] + totals["duplicates"]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r["reason"] for r in rejects}
    assert by_path["01_TOY/missing.jpg"] == "missing image file"
    assert by_path["01_TOY/empty.jpg"] == "zero-byte image file"
    assert by_path["01_TOY/truncated.jpg"].startswith("truncated or corrupt image")
    assert by_path["01_TOY/corrupt.jpg"].startswith("not a readable image")
    assert by_path["01_TOY/bomb.png"].startswith("decompression bomb: 300x300")
    assert "escapes the image root" in by_path["../escape.jpg"]
    assert by_path["01_TOY/sixteen.png"].startswith("empty caption")
    assert all({"source", "line", "path", "reason"} <= r.keys() for r in rejects)
    dups = [json.loads(line) for line in (out / "duplicates.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] for d in dups) == ["same dataset and image path", "same image content",
                                                 "same image content"]
    assert index["rejects_by_reason"]["missing image file"] == 1
    assert verify(out, progress=False) == []


def test_samples_carry_normalised_metadata(messy_tree):
    out = messy_tree["tmp"] / "shards"
    run_build(messy_tree, out)
    samples = {s["__key__"]: s for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)}
    metas = {json.loads(s["json"])["path"]: (s, json.loads(s["json"])) for s in samples.values()}
    good, meta = metas["01_TOY/good.jpg"]
    assert meta["categories"] == ["drusen", "hemorrhages"] and meta["categories_raw"] == ["Drusens", "haemorrhages."]
    vocab = json.loads((out / "index.json").read_text())["label_vocabulary"]
    assert sorted(vocab[i] for i in meta["labels"]) == ["drusen", "hemorrhages"]
    assert meta["modality"] == "CFP" and meta["split"] == "train" and meta["dataset"] == "01_TOY"
    assert Image.open(__import__("io").BytesIO(good["jpg"])).size == (32, 32)
    _, cmyk = metas["01_TOY/cmyk.jpg"]
    assert cmyk["converted"] == "CMYK->RGB" and cmyk["attributes"] == ["noisy"]
    _, caption = metas["02_CAP/x.jpg"]
    assert caption["labels_from"] == "caption"
    assert "soft exudates" in caption["categories"] and "hemorrhages" not in caption["categories"]
    assert samples[caption["key"]]["txt"] == b"Soft exudates without haemorrhages."


def test_shards_are_plain_tars_with_whitelisted_members(messy_tree):
    out = messy_tree["tmp"] / "shards"
    run_build(messy_tree, out)
    for shard in out.glob("*.tar"):
        listing = subprocess.run(["tar", "-tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
        assert listing and all(name.rsplit(".", 1)[1] in ("jpg", "png", "txt", "json") for name in listing)
        with tarfile.open(shard) as tar:
            assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_builds_are_deterministic_across_worker_counts(messy_tree):
    a = messy_tree["tmp"] / "a"
    b = messy_tree["tmp"] / "b"
    run_build(messy_tree, a, workers=1)
    run_build(messy_tree, b, workers=2)
    names = sorted(p.name for p in a.glob("*.tar"))
    assert names == sorted(p.name for p in b.glob("*.tar")) and len(names) == 3
    assert [file_sha256(a / n) for n in names] == [file_sha256(b / n) for n in names]
    assert (a / "rejects.jsonl").read_bytes() == (b / "rejects.jsonl").read_bytes()


def test_split_rule_and_order(messy_tree):
    out = messy_tree["tmp"] / "split"
    index = run_build(messy_tree, out, split="train=50,val=50", order="source", shard_size=100)
    assert set(index["splits"]) == {"train", "val"}
    assert sum(s["samples"] for s in index["splits"].values()) == 6
    assert all(s["name"].startswith(s["split"] + "-") for s in index["shards"])
    val_urls = shard_urls(out, "val")
    assert val_urls and all(Path(u).name.startswith("val-") for u in val_urls)
    assert sorted(shard_urls(out)) == sorted(str(p) for p in out.glob("*.tar"))


def test_rebuild_skips_verified_shards_and_replaces_changed_ones(messy_tree, caplog):
    out = messy_tree["tmp"] / "shards"
    first = run_build(messy_tree, out)
    caplog.clear()
    with caplog.at_level("INFO"):
        again = run_build(messy_tree, out)
    assert "3 of 3 shards already built" in caplog.text
    assert again["shards"] == first["shards"]
    # a shard damaged on disk is detected by verify and rebuilt by the next run
    victim = out / first["shards"][0]["name"]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert any("sha256 does not match" in p for p in verify(out, progress=False))
    run_build(messy_tree, out)
    assert verify(out, progress=False) == []
    # a different plan (bigger shards) leaves no stale shard files behind
    run_build(messy_tree, out, shard_size=100)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"]
    assert verify(out, progress=False) == []


def test_verify_reports_count_mismatches(messy_tree):
    out = messy_tree["tmp"] / "shards"
    run_build(messy_tree, out)
    index = json.loads((out / "index.json").read_text())
    index["totals"]["written"] += 1
    (out / "index.json").write_text(json.dumps(index))
    (out / "rejects.jsonl").write_text("")
    problems = verify(out, progress=False)
    assert any("index totals say 7 samples written" in p for p in problems)
    assert any("rejects.jsonl: 0 lines" in p for p in problems)
    assert any("rows read 16 != written 7" in p for p in problems)


def test_file_level_errors_stop_before_any_work(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(",image,atributes\n0,a.jpg,[]\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"bad\.csv: .*needs a .categories. column"):
        build(BuildConfig(out=out, sources=[f"flair:{bad}"], workers=1, progress=False))
    assert not list(out.glob("*.tar"))
