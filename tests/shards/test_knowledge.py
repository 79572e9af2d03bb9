"""The ophthalmic knowledge file and its API: normalisation, negation, prompts, validation."""

from __future__ import annotations

import ast
import copy
import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from shards.knowledge import REQUIRED_CATEGORIES, load_knowledge, parse_knowledge

# The real KeepFIT/FLAIR dataframes beside the repository; absent in a fresh clone.
REF = Path(__file__).resolve().parents[3] / "shared" / "reference-data" / "keepfit-dataframes"


@pytest.fixture(scope="module")
def kb():
    return load_knowledge()


@pytest.fixture(scope="module")
def raw_data() -> dict:
    """The bundled YAML as parsed data; tests deep-copy it before changing it."""
    import importlib.resources

    text = importlib.resources.files("shards.knowledge").joinpath("ophthalmic.yaml").read_text("utf-8")
    return yaml.safe_load(text)


# ---- vocabulary ----

def test_loader_is_cached_and_versioned(kb):
    assert load_knowledge() is kb
    assert kb.version == 1
    assert 60 <= len(kb.vocabulary) <= 90


def test_required_names_exist(kb):
    assert set(REQUIRED_CATEGORIES) <= set(kb.vocabulary)


def test_names_unique_and_described(kb):
    assert len(set(kb.vocabulary)) == len(kb.vocabulary)
    for i, category in enumerate(kb.categories):
        assert category.id == i
        assert category.description.strip() and category.group.strip()
        assert kb.description(category.name) == category.description
        assert kb.normalize(category.name) == category.name


def test_every_synonym_and_keyword_resolves_to_its_own_category(kb):
    for category in kb.categories:
        for synonym in category.synonyms:
            assert kb.normalize(synonym) == category.name, synonym
        for keyword in category.keywords:
            assert kb.extract_labels(keyword) == [category.name], keyword


# ---- normalisation ----

@pytest.mark.parametrize("raw, canonical", [
    ("drusens", "drusen"),
    ("drusen", "drusen"),
    ("Drusen.", "drusen"),
    ("haemorrhages", "hemorrhages"),
    ("hemorrhage", "hemorrhages"),
    ("retinal hemorrhage", "hemorrhages"),
    ("mild nonproliferative retinopathy", "mild diabetic retinopathy"),
    ("moderate non proliferative retinopathy", "moderate diabetic retinopathy"),
    ("severe nonproliferative retinopathy", "severe diabetic retinopathy"),
    ("proliferative diabetic retinopathy.", "proliferative diabetic retinopathy"),
    ("  MODERATE   Diabetic_Retinopathy ; ", "moderate diabetic retinopathy"),
    ("central serous retinopathy (csr)", "central serous retinopathy"),
    ("Branch Retinal Vein Occlusion (BRVO)", "branch retinal vein occlusion"),
    ("age-related macular degeneration", "age related macular degeneration"),
    ("hard exudate", "hard exudates"),
    ("soft exudate", "soft exudates"),
    ("cotton wool spots", "soft exudates"),
    ("more than three small soft exudates", "soft exudates"),
    ("red small dots", "microaneurysms"),
    ("microaneurysm", "microaneurysms"),
    ("macular oedema", "macular edema"),
    ("Neovascularisation", "neovascularization"),
    ("stargardt's disease", "stargardt disease"),
    ("a disease", "abnormal fundus"),
    ("normal fundus", "normal"),
    ("optic disc cupping", "increased cup disc"),
    ("srnv-md.", "wet age related macular degeneration"),
    ("\uff24\uff52\uff55\uff53\uff45\uff4e", "drusen"),  # full-width letters fold under NFKC
    ("0c", "no diabetic retinopathy"),
    ("1c", "mild diabetic retinopathy"),
    ("2c", "moderate diabetic retinopathy"),
    ("3c", "severe diabetic retinopathy"),
    ("4c", "proliferative diabetic retinopathy"),
])
def test_normalize(kb, raw, canonical):
    assert kb.normalize(raw) == canonical


# The most frequent raw category strings of the real dataframes (blank excluded).
FREQUENT_RAW = [
    "no diabetic retinopathy", "normal vessels", "normal optic disc", "normal macula",
    "moderate diabetic retinopathy", "no glaucoma", "abnormal macula", "normal fundus", "glaucoma",
    "a disease", "abnormal optic disc", "drusens", "normal", "increased cup disc",
    "proliferative diabetic retinopathy", "retinal hemorrhage", "microaneurysm", "hard exudate",
    "retinal edema", "more than three small soft exudates", "mild diabetic retinopathy",
    "moderate non proliferative retinopathy", "no diabetic macular edema", "severe diabetic retinopathy",
    "diabetic retinopathy", "hard exudates", "mild nonproliferative retinopathy", "microaneurysms",
    "no laser scar", "subretinal neovascularization (srnv)", "preretinal haemorrhage", "abnormal vessels",
    "neovascularization", "fibrovascular proliferativemembrane", "tractionalretinaldetachment", "0c",
    "hypertensive retinopathy", "haemorrhages", "1c", "4c", "2c", "no disease", "healthy",
    "soft exudates", "srnv-md", "exudates", "central serous retinopathy (csr)",
    "age-related macular degeneration", "myopia", "media haze",
    "presumed ocular histoplasmosis syndrome (pohs)", "branch vein occlusion (bvo)", "3c",
    "intraretinal microvascular abnormality", "soft exudate", "varicose veins",
    "non-perfusion area over one disc area", "aofped", "optic disc cupping", "macular edema", "drusen",
    "dry age-related macular degeneration", "diabetic macular edema", "pigment epithelial detachment (ped)",
    "proliferative diabetic retinopathy.", "macular hole", "choroidal neovascular membrane (cnvm)",
    "best disease", "central serous retinopathy.", "red small dots", "epiretinal membrane", "scar",
    "age related macular degeneration", "macular epiretinal membrane", "angioid streaks",
    "stargardt's disease", "tessellation", "retinitis pigmentosa", "cataract",
    "severe nonproliferative retinopathy", "retinitis", "pattern dystrophy",
    "branch retinal vein occlusion (brvo)", "choroideremia", "nevus", "lens dust", "pathologic myopia",
    "cone dystrophy", "myelinated nerve fibers", "retinal detachment",
    "no referable diabetic macular edema", "laser scar", "branch retinal vein occlusion",
    "deep haemorrhages", "cotton wool spots", "superficial haemorrhages", "optic disc edema",
    "central retinal vein occlusion (crvo)", "cystoid macular edema (cme)", "hemorrhage",
]


def test_frequent_raw_strings_all_normalise(kb):
    missing = [raw for raw in FREQUENT_RAW if kb.normalize(raw) is None]
    assert not missing


def test_unknown_and_blank(kb):
    assert kb.normalize("66-year-old white female") is None
    assert kb.normalize("") is None and kb.normalize("  . ") is None
    assert kb.clean("  Haemorrhage  near the Disc. ") == "hemorrhage near the disc"
    assert kb.clean(" ;. ") == ""


def test_normalize_all_dedups_and_keeps_unknown_text(kb):
    canonical, unknown = kb.normalize_all(
        ["drusens", "Drusen.", "", "0c", "Odd Finding.", "odd finding", "  ", "no diabetic retinopathy"])
    assert canonical == ["drusen", "no diabetic retinopathy"]
    assert unknown == ["odd finding"]


def test_label_ids_and_multi_hot_agree(kb):
    names = ["glaucoma", "drusen", "drusens", "normal"]
    ids = kb.label_ids(names)
    assert ids == sorted({kb.vocabulary.index(n) for n in ("glaucoma", "drusen", "normal")})
    vector = kb.multi_hot(names)
    assert vector.dtype == np.uint8 and vector.shape == (len(kb.vocabulary),)
    assert np.flatnonzero(vector).tolist() == ids
    assert kb.multi_hot([]).sum() == 0
    with pytest.raises(KeyError):
        kb.label_ids(["not a finding at all"])


def test_group_and_description(kb):
    assert kb.group("microaneurysms") == "lesion"
    assert kb.group("moderate diabetic retinopathy") == "dr grade"
    assert kb.group("glaucoma") == "glaucoma"
    assert "capillar" in kb.description("microaneurysms")


# ---- negation-aware extraction ----

@pytest.mark.parametrize("text, expected", [
    ("no glaucoma", ["no glaucoma"]),
    ("No diabetic retinopathy.", ["no diabetic retinopathy"]),
    ("glaucoma", ["glaucoma"]),
    ("no signs of diabetic retinopathy, but drusen are present", ["drusen"]),
    ("no hemorrhages, exudates or microaneurysms", []),
    ("no hemorrhages. Drusen at the macula", ["drusen"]),
    ("no hemorrhages; drusen at the macula", ["drusen"]),
    ("no glaucoma, drusen present", ["no glaucoma", "drusen"]),
    ("absence of drusen however microaneurysms are seen", ["microaneurysms"]),
    ("neither drusen nor hemorrhages", []),
    ("drusen are absent", []),
    ("glaucoma was ruled out", []),
    ("glaucoma not ruled out", ["glaucoma"]),
    ("no change in the drusen", ["drusen"]),
    ("not only drusen but also hemorrhages", ["drusen", "hemorrhages"]),
    ("microaneurysms, hard exudates and cotton-wool spots with macular oedema",
     ["microaneurysms", "hard exudates", "soft exudates", "macular edema"]),
    ("moderate non-proliferative diabetic retinopathy without neovascularisation",
     ["moderate diabetic retinopathy"]),
    ("no drusen and no glaucoma", ["no glaucoma"]),
    ("a normal fundus without any hemorrhage", ["normal"]),
    ("no evidence of neovascularization in an otherwise proliferative diabetic retinopathy, which shows"
     " fibrovascular membranes", ["fibrovascular proliferation"]),
])
def test_extract_labels(kb, text, expected):
    assert kb.extract_labels(text) == expected


def test_negation_window_is_bounded(kb):
    far = "no " + "word " * (kb.negation.window + 2) + "drusen"
    assert kb.extract_labels(far) == ["drusen"]


def test_extraction_matches_whole_words_longest_first(kb):
    assert kb.extract_labels("proliferative diabetic retinopathy") == ["proliferative diabetic retinopathy"]
    assert kb.extract_labels("abnormal retina") == ["abnormal fundus"]
    assert kb.extract_labels("crvo") == ["central retinal vein occlusion"]
    assert kb.extract_labels("macrodrusen") == []  # no match inside a word


# ---- prompts ----

def test_prompts_fill_both_placeholders(kb):
    with_attribute = kb.prompts("drusens", attribute="noisy")
    without = kb.prompts("drusen")
    assert "A noisy fundus photograph of drusen" in with_attribute
    assert "A fundus photograph of drusen" in without
    assert kb.description("drusen") in without and kb.description("drusen") in with_attribute
    for prompt in with_attribute + without:
        assert "[CLS]" not in prompt and "[ATR]" not in prompt
        assert "  " not in prompt and prompt == prompt.strip()
    assert not any("noisy" in p for p in without)
    assert len(without) == len(set(without))
    assert kb.prompts("drusen", attribute="") == without


def test_prompts_for_free_text_labels(kb):
    prompts = kb.prompts("Odd Finding.")
    assert "A fundus photograph of odd finding" in prompts
    with pytest.raises(ValueError):
        kb.prompts("  ")


# ---- validation ----

def test_duplicate_synonym_is_rejected(raw_data):
    data = copy.deepcopy(raw_data)
    data["categories"][1]["synonyms"].append("Drusens")  # already drusen's
    with pytest.raises(ValueError, match="Drusens"):
        parse_knowledge(data)


def test_synonym_equal_to_another_name_is_rejected(raw_data):
    data = copy.deepcopy(raw_data)
    data["categories"][0]["synonyms"].append("glaucoma")
    with pytest.raises(ValueError, match="glaucoma"):
        parse_knowledge(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["categories"].append(dict(d["categories"][0])), "duplicate category name"),
    (lambda d: d["categories"][0].update(description=""), "description"),
    (lambda d: d["categories"][0].update(name="Normal"), "normalised form"),
    (lambda d: d.update(templates=["A fundus photograph"]), "CLS"),
    (lambda d: d["negation"]["cues"].append(False), "quote"),  # an unquoted YAML `no`
    (lambda d: d["negation"]["pseudo"].append("not"), "both"),
    (lambda d: d.update(version="1"), "version"),
])
def test_malformed_knowledge_is_rejected(raw_data, mutate, message):
    data = copy.deepcopy(raw_data)
    mutate(data)
    with pytest.raises(ValueError, match=message):
        parse_knowledge(data)


def test_user_supplied_file(tmp_path, raw_data):
    data = copy.deepcopy(raw_data)
    data["version"] = 7
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    custom = load_knowledge(path)
    assert custom.version == 7 and custom is load_knowledge(str(path))
    assert custom.vocabulary == load_knowledge().vocabulary


# ---- the real dataframes ----

# A categories cell holding a clinical note rather than a label: long, or with an age or a
# clause separator. These are expected to fall through to clean() as free text.
_FREE_TEXT = re.compile(r"\d+\s*-?\s*years?\s*-?\s*old|[,;:]")


def _real_categories() -> Counter:
    counts: Counter = Counter()
    for folder in ("pretraining", "transferability"):
        for path in sorted((REF / folder).rglob("*.csv")):
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if "categories" not in (reader.fieldnames or []):
                    continue
                for row in reader:
                    counts.update(ast.literal_eval(row["categories"] or "[]"))
    return counts


@pytest.mark.skipif(not REF.is_dir(), reason="reference dataframes not present")
def test_real_categories_coverage(kb):
    counts = _real_categories()
    occurrences = {raw: n for raw, n in counts.items() if kb.clean(raw)}
    labels = {raw: n for raw, n in occurrences.items()
              if len(kb.clean(raw).split()) <= 8 and not _FREE_TEXT.search(kb.clean(raw))}
    known = {raw for raw in occurrences if kb.normalize(raw) is not None}
    label_coverage = sum(n for raw, n in labels.items() if raw in known) / sum(labels.values())
    overall = sum(n for raw, n in occurrences.items() if raw in known) / sum(occurrences.values())
    report = (f"label coverage {label_coverage:.3f} over {sum(labels.values())} label occurrences; "
              f"overall {overall:.3f} over {sum(occurrences.values())} occurrences incl. clinical notes")
    assert label_coverage >= 0.90, report
    # Clinical notes in one source (06_DEN) cap the overall figure; guard it against regressions.
    assert overall >= 0.85, report
    # Free text never fails: it normalises to None and cleans to a non-empty string.
    for raw in occurrences:
        if raw not in known:
            assert kb.clean(raw)
