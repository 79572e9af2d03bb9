"""Readers against the real reference dataframes and against every file-level and row-level problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shards.readers import SourceError, SourceSpec, read_source
from shards.readers.fields import parse_list
from shards.records import Record, Reject
from tests.shards.helpers import count_csv_rows, write_caption_csv, write_flair_csv


def read(spec: str):
    items = read_source(SourceSpec.parse(spec))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Reject)]


# ----------------------------------------------------------------------------- real reference data

def all_reference_csvs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.csv"))


def test_every_reference_row_is_a_record_or_a_reject(reference_dir):
    files = all_reference_csvs(reference_dir)
    assert len(files) >= 40
    for path in files:
        kind = "mm-retinal" if path.parent.name == "ffa" else "flair"
        if path.name.startswith("39_MM_Retinal"):
            kind = "captions"
        records, rejects = read(f"{kind}:{path}")
        assert len(records) + len(rejects) == count_csv_rows(path), path.name
        assert {r.source for r in records + rejects} == {str(path)}


@pytest.fixture(scope="module")
def pretraining(reference_dir):
    return read(f"flair:{reference_dir / 'pretraining'}")


def test_reference_folder_mixes_layouts(reference_dir, pretraining):
    """The KeepFIT pretraining folder holds FLAIR dataframes and the MM-Retinal caption CSV side by side."""
    records, rejects = pretraining
    expected = sum(count_csv_rows(p) for p in (reference_dir / "pretraining").glob("*.csv"))
    assert len(records) + len(rejects) == expected
    captioned = [r for r in records if r.caption]
    assert len(captioned) == count_csv_rows(reference_dir / "pretraining" / "39_MM_Retinal_dataset.csv")
    brset = next(r for r in records if r.dataset == "27_BRSET")
    assert brset.categories[:2] == ("normal optic disc", "normal vessels")


def test_reference_free_text_and_empty_categories(pretraining):
    records, _ = pretraining
    cats = [c for r in records for c in r.categories]
    assert "" in cats  # upstream has empty-string categories; they are kept raw and cleaned later
    assert any(len(c.split()) >= 5 for c in cats)  # free-text labels survive parsing intact
    with_attributes = [r for r in records if r.attributes]
    assert "noisy" in {a for r in with_attributes for a in r.attributes}


def test_reference_ffa_caption_inside_categories(reference_dir):
    records, rejects = read(f"mm-retinal:{reference_dir / 'ffa' / 'FFA.csv'}")
    assert not rejects
    first = records[0]
    assert first.modality == "FFA" and first.dataset == "MM-Retinal"
    assert first.caption.startswith("Fundus image of the left eye") and not first.categories


def test_reference_eval_splits_parse(reference_dir):
    records, rejects = read(f"flair:{reference_dir / 'transferability' / 'classification' / '13_FIVES.csv'}")
    assert not rejects and len(records) == 800
    assert {r.categories[0] for r in records} == {"age related macular degeneration", "diabetic retinopathy",
                                                  "glaucoma", "normal"}


# ----------------------------------------------------------------------------- layouts

def test_flair_rows_and_row_level_rejects(tmp_path):
    csv_path = write_flair_csv(tmp_path / "07_TOY.csv", [
        ("07_TOY/a.jpg", "['clean']", "['microaneurysms', 'haemorrhages']"),
        ("07_TOY/b.jpg", "[]", "[]"),
        ("07_TOY/c.jpg", "[]", "__import__('os').system('echo pwned')"),
        ("07_TOY/d.jpg", "[]", "['unterminated"),
        ("../outside.jpg", "[]", "['glaucoma']"),
        ("/etc/passwd", "[]", "['glaucoma']"),
        ("", "[]", "['glaucoma']"),
    ])
    records, rejects = read(f"flair:{csv_path}:{tmp_path}")
    assert [r.path for r in records] == ["07_TOY/a.jpg", "07_TOY/b.jpg"]
    assert records[0].categories == ("microaneurysms", "haemorrhages") and records[0].attributes == ("clean",)
    assert records[0].image_file == tmp_path / "07_TOY" / "a.jpg"
    assert records[0].dataset == "07_TOY" and records[0].line == 2
    reasons = {r.line: r.reason for r in rejects}
    assert "not a list literal" in reasons[4]
    assert "not a valid list literal" in reasons[5]
    assert "escapes the image root" in reasons[6]
    assert "absolute image path" in reasons[7]
    assert "empty image path" in reasons[8]


def test_parse_list_never_evaluates_code():
    with pytest.raises(ValueError):
        parse_list("[__import__('os').getcwd()]", column="categories")
    assert parse_list("['a', \"b's\"]", column="c") == ("a", "b's")
    assert parse_list("", column="c") == ()


def test_missing_column_is_a_clear_error_before_any_work(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",image,atributes\n0,a.jpg,[]\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"bad\.csv.*caption"):
        read(f"flair:{path}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("file_name,caption\nx.jpg,hello\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"m\.csv: missing column for the image path"):
        read(f"manifest:{manifest}")


def test_wrong_kind_for_a_single_file_names_the_right_one(tmp_path):
    path = write_caption_csv(tmp_path / "caps.csv", [("a.jpg", "A fundus photograph")])
    with pytest.raises(SourceError, match="captions:"):
        read(f"flair:{path}")


def test_non_utf8_csv_is_decoded_with_a_fallback(tmp_path, caplog):
    path = write_flair_csv(tmp_path / "latin.csv", [("x/é.jpg", "[]", "['hémorragie']")], encoding="cp1252")
    records, rejects = read(f"flair:{path}")
    assert not rejects and records[0].path == "x/é.jpg" and records[0].categories == ("hémorragie",)
    assert "not UTF-8" in caplog.text and "cp1252" in caplog.text


def test_empty_caption_is_rejected(tmp_path):
    path = write_caption_csv(tmp_path / "caps.csv", [("a.jpg", "Drusen at the macula."), ("b.jpg", "  ")])
    records, rejects = read(f"captions:{path}")
    assert len(records) == 1 and rejects[0].reason.startswith("empty caption") and rejects[0].line == 3


def test_mm_retinal_release_folder(tmp_path):
    root = tmp_path / "MM-Retinal"
    for modality in ("CFP", "FFA", "OCT"):
        (root / modality).mkdir(parents=True)
    (root / "CFP.csv").write_text("Image,en_caption,zh_caption\nfigure01-01A.jpg,Normal fundus.,正常眼底\n"
                                  "figure01-01B.jpg,,空\n", encoding="utf-8")
    (root / "FFA.csv").write_text("Image,en_caption\nFFA/figure02-01A.jpg,Late leakage at the disc.\n",
                                  encoding="utf-8")
    (root / "OCT" / "captions.csv").write_text("image,caption\nfigure03-01A.jpg,Subretinal fluid.\n",
                                               encoding="utf-8")
    records, rejects = read(f"mm-retinal:{root}")
    by_modality = {r.modality: r for r in records}
    assert set(by_modality) == {"CFP", "FFA", "OCT"}
    assert by_modality["CFP"].caption_zh == "正常眼底" and by_modality["CFP"].dataset == "MM-Retinal"
    assert by_modality["CFP"].image_file == root / "CFP" / "figure01-01A.jpg"
    assert by_modality["FFA"].image_file == root / "FFA" / "figure02-01A.jpg"
    assert by_modality["OCT"].image_file == root / "OCT" / "figure03-01A.jpg"
    assert len(rejects) == 1 and "empty caption" in rejects[0].reason


def test_manifest_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "reports.csv"
    csv_path.write_text("image,report,labels,modality,split\n"
                        "a.png,No diabetic retinopathy. Drusen present.,drusen|no diabetic retinopathy,CFP,val\n"
                        "b.png,,,,\n"
                        "c.png,Leakage,,XRAY,\n", encoding="utf-8")
    records, rejects = read(f"manifest:{csv_path}")
    assert records[0].categories == ("drusen", "no diabetic retinopathy") and records[0].split == "val"
    assert {r.line: r.reason for r in rejects} == {3: "neither a caption nor labels",
                                                   4: "unknown modality 'XRAY' (expected one of ['CFP', 'FFA', 'OCT'])"}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"image": "OCT/x.png", "caption": "Fluid."}) + "\n{broken\n[1, 2]\n"
                     + json.dumps({"image": "y.png", "labels": ["glaucoma"]}) + "\n", encoding="utf-8")
    records, rejects = read(f"manifest:{jsonl}")
    assert [r.modality for r in records] == ["OCT", "CFP"] and records[1].categories == ("glaucoma",)
    assert sorted(r.line for r in rejects) == [2, 3]


def test_source_spec_errors(tmp_path):
    with pytest.raises(SourceError, match="KIND one of"):
        SourceSpec.parse(f"parquet:{tmp_path}")
    with pytest.raises(SourceError, match="does not exist"):
        SourceSpec.parse(f"flair:{tmp_path / 'nope.csv'}")
