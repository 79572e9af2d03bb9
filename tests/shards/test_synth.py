"""The synthetic data generator: determinism, on-disk layouts, and classes that show in the pixels."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from shards.synth import render_cfp, render_ffa, render_for_dataframe, render_oct, synthesize
from shards.synth.captions import write_caption
from shards.synth.recipe import make_recipe
from shards.synth.sources import messy
from shards.synth.vocabulary import CANONICAL, recognise

SMALL = dict(public=30, elite=12, eval=15, image_size=96, progress=False)
FLAIR_HEADER = ["", "image", "atributes", "categories"]
PRETRAINING = ("90_SYNTH_DR", "91_SYNTH_GLAUCOMA", "92_SYNTH_MULTILESION")
EVALUATION = ("SYNTH_GLAUCOMA", "SYNTH_DRGRADING", "SYNTH_FIVES")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "out"
    synthesize(out, seed=0, **SMALL)
    return out


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def rows_of(path: Path) -> list[list[str]]:
    return read_rows(path)[1]


def image_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.suffix in (".jpg", ".png")]


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes(tree: Path, tmp_path: Path) -> None:
    synthesize(tmp_path / "again", seed=0, **SMALL)
    assert digests(tree) == digests(tmp_path / "again")


def test_other_seed_gives_other_images(tree: Path, tmp_path: Path) -> None:
    synthesize(tmp_path / "other", seed=1, **SMALL)
    first, second = digests(tree), digests(tmp_path / "other")
    shared = [k for k in first.keys() & second.keys() if k.endswith((".jpg", ".png"))]
    assert len(shared) >= 45  # the categorical sets keep their file names
    assert all(first[k] != second[k] for k in shared)


def test_images_do_not_depend_on_run_size(tree: Path, tmp_path: Path) -> None:
    synthesize(tmp_path / "smaller", seed=0, public=10, elite=0, eval=0, image_size=96, progress=False)
    smaller = digests(tmp_path / "smaller")
    images = [k for k in smaller if k.endswith((".jpg", ".png"))]
    assert len(images) == 10
    assert all(smaller[k] == digests(tree)[k] for k in images)


def test_renderers_are_deterministic_and_mirror_the_eye() -> None:
    for render in (render_cfp, render_ffa, render_oct):
        a = render(["moderate diabetic retinopathy"], np.random.default_rng(5), 64, "right")
        b = render(["moderate diabetic retinopathy"], np.random.default_rng(5), 64, "right")
        assert a.tobytes() == b.tobytes()
    assert render_cfp(["normal"], np.random.default_rng(0), 64, "left").mode == "RGB"
    assert render_ffa(["normal"], np.random.default_rng(0), 64, "left").mode == "L"
    assert render_oct(["normal"], np.random.default_rng(0), 64, "left").size == (64, 64)
    right = np.asarray(render_cfp(["glaucoma"], np.random.default_rng(9), 96, "right"), dtype=np.float32)
    left = np.asarray(render_cfp(["glaucoma"], np.random.default_rng(9), 96, "left"), dtype=np.float32)
    assert np.abs(left[:, ::-1] - right).mean() < 1.0


# --- layout --------------------------------------------------------------------------------------

def test_every_listed_file_exists(tree: Path) -> None:
    frames = tree / "dataframes"
    for name in PRETRAINING:
        assert (frames / "pretraining" / f"{name}.csv").is_file()
    for name in EVALUATION:
        assert (frames / "transferability" / "classification" / f"{name}.csv").is_file()
    for path in (frames / "pretraining" / "39_MM_Retinal_dataset.csv", frames / "ffa" / "FFA.csv", tree / "synth.json"):
        assert path.is_file()
    for modality in ("CFP", "FFA", "OCT"):
        assert (tree / "images" / "MM-Retinal" / f"{modality}.csv").is_file()
    assert {p.suffix for p in (tree / "images" / "91_SYNTH_GLAUCOMA" / "train").iterdir()} == {".png"}
    assert {p.suffix for p in (tree / "images" / "90_SYNTH_DR" / "train").iterdir()} == {".jpg"}


def check_flair(path: Path, images: Path) -> list[tuple[list[str], list[str]]]:
    header, rows = read_rows(path)
    assert header == FLAIR_HEADER
    assert rows, path
    parsed = []
    for i, (index, image, attributes, categories) in enumerate(rows):
        assert index == str(i)
        with Image.open(images / image) as img:
            img.load()
        attributes, categories = ast.literal_eval(attributes), ast.literal_eval(categories)
        assert isinstance(attributes, list) and isinstance(categories, list) and categories
        assert all(isinstance(x, str) for x in attributes + categories)
        parsed.append((attributes, categories))
    return parsed


def test_flair_dataframes(tree: Path) -> None:
    images, frames = tree / "images", tree / "dataframes"
    for name in PRETRAINING:
        check_flair(frames / "pretraining" / f"{name}.csv", images)
    expected = {
        "SYNTH_GLAUCOMA": {"glaucoma", "no glaucoma"},
        "SYNTH_DRGRADING": {"no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
                            "severe diabetic retinopathy", "proliferative diabetic retinopathy"},
        "SYNTH_FIVES": {"age related macular degeneration", "diabetic retinopathy", "glaucoma", "normal"},
    }
    for name, classes in expected.items():
        rows = check_flair(frames / "transferability" / "classification" / f"{name}.csv", images)
        assert {c for _, cats in rows for c in cats} == classes
    ffa = check_flair(frames / "ffa" / "FFA.csv", images)
    assert all(len(cats) == 1 and ("angiogra" in cats[0].lower() or "FFA" in cats[0]) for _, cats in ffa)


def test_list_cells_are_written_like_pandas(tree: Path) -> None:
    text = (tree / "dataframes" / "pretraining" / "92_SYNTH_MULTILESION.csv").read_text(encoding="utf-8")
    assert "\r" not in text
    assert ",[],['" in text or ",['clean'],['" in text or ",['noisy'],['" in text
    assert "\"['microaneurysms', '" in text  # lists with a comma are quoted, with ', ' between items


def test_caption_tables(tree: Path) -> None:
    images = tree / "images"
    header, rows = read_rows(tree / "dataframes" / "pretraining" / "39_MM_Retinal_dataset.csv")
    assert header == ["", "image", "caption"]
    for i, (index, image, caption) in enumerate(rows):
        assert index == str(i) and image.startswith("MM-Retinal/CFP/figure") and (images / image).is_file()
        assert caption.endswith(".") and " eye" in caption
    counts = json.loads((tree / "synth.json").read_text(encoding="utf-8"))["counts"]
    for modality in ("CFP", "FFA", "OCT"):
        header, rows = read_rows(images / "MM-Retinal" / f"{modality}.csv")
        assert header == ["Image", "en_caption", "zh_caption"]
        assert len(rows) == counts[f"MM-Retinal/{modality}"]
        for file, en, zh in rows:
            with Image.open(images / "MM-Retinal" / modality / file) as img:
                assert img.mode == ("RGB" if modality == "CFP" else "L")
                assert img.size == (96, 96)
            assert file.startswith("figure") and "/" not in file and en and any("\u4e00" <= ch <= "\u9fff" for ch in zh)
    assert sum(counts[f"MM-Retinal/{m}"] for m in ("CFP", "FFA", "OCT")) == 12
    assert counts["MM-Retinal/CFP"] == len(rows_of(tree / "dataframes" / "pretraining" / "39_MM_Retinal_dataset.csv"))


def test_manifest_matches_the_tree(tree: Path) -> None:
    manifest = json.loads((tree / "synth.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 0 and manifest["image_size"] == 96
    assert sum(manifest["counts"][n] for n in PRETRAINING) == 30
    assert sum(manifest["counts"][n] for n in EVALUATION) == 15
    assert manifest["classes"]["SYNTH_GLAUCOMA"] == ["glaucoma", "no glaucoma"]
    for name in PRETRAINING:
        assert len(rows_of(tree / "dataframes" / "pretraining" / f"{name}.csv")) == manifest["counts"][name]
    assert len(image_files(tree / "images")) == 30 + 12 + 15


def test_evaluation_images_are_disjoint_from_training(tree: Path) -> None:
    all_files = digests(tree / "images")
    evaluation = {k: v for k, v in all_files.items() if k.startswith("eval/")}
    training = {k: v for k, v in all_files.items() if not k.startswith("eval/") and not k.endswith(".csv")}
    assert len(evaluation) == 15
    assert not set(evaluation.values()) & set(training.values())


def test_messy_labels_still_name_their_class() -> None:
    rng = np.random.default_rng(0)
    for name in CANONICAL:
        variants = {messy(name, rng, rate=1.0) for _ in range(40)}
        assert len(variants) > 1
        assert all(recognise([v]) == {name} for v in variants), (name, variants)


# --- classes are visible in pixels ---------------------------------------------------------------

def isolated_dark_pixels(img: Image.Image, radius: int) -> int:
    """Green-channel pixels darker than every pixel on a ring around them: blobs, not vessels.

    A light blur first, so sensor noise along a vessel does not read as a blob.
    """
    g = np.asarray(img.getchannel("G").filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)
    pad, (h, w) = np.pad(g, radius, mode="edge"), g.shape
    ring = np.full_like(g, np.inf)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if radius - 0.5 <= np.hypot(dy, dx) < radius + 0.5:
                ring = np.minimum(ring, pad[radius + dy:radius + dy + h, radius + dx:radius + dx + w])
    return int(((ring - g) > 8).sum())


def bright_cup_fraction(img: Image.Image) -> float:
    """Share of a window around the brightest spot (the disc) that is near its top brightness (the cup)."""
    size = img.size[0]
    green = img.getchannel("G")
    smooth = np.asarray(green.filter(ImageFilter.BoxBlur(size // 40)), dtype=np.float32)
    y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
    w = int(size * 0.09)
    window = np.asarray(green, dtype=np.float32)[max(0, y - w):y + w, max(0, x - w):x + w]
    low, high = np.percentile(window, 5), window.max()
    return float((window > low + 0.8 * (high - low)).mean())


def renders(categories: list[str], n: int = 8, size: int = 192) -> list[Image.Image]:
    return [render_cfp(categories, np.random.default_rng([7, i]), size, ("right", "left")[i % 2]) for i in range(n)]


def test_glaucoma_shows_a_larger_cup() -> None:
    glaucoma = np.mean([bright_cup_fraction(i) for i in renders(["glaucoma"])])
    healthy = np.mean([bright_cup_fraction(i) for i in renders(["no glaucoma"])])
    assert glaucoma > 2 * healthy


def test_red_lesions_show_as_dark_blobs() -> None:
    def blobs(categories: list[str]) -> float:
        return float(np.mean([isolated_dark_pixels(i, 3) for i in renders(categories)]))

    normal, mild = blobs(["normal"]), blobs(["mild diabetic retinopathy"])
    assert blobs(["microaneurysms", "hemorrhages"]) > 3 * normal + 5
    assert blobs(["severe diabetic retinopathy"]) > 2 * mild > 2 * normal


def test_captions_describe_what_is_drawn() -> None:
    rng = np.random.default_rng(0)
    recipe = make_recipe(["severe diabetic retinopathy"], rng)
    en, zh = write_caption(recipe, "CFP", "left", rng, same_as="1-1A")
    assert "left eye" in en and "haemorrhages" in en and "severe non-proliferative" in en
    assert en.endswith("Same person as Figure 1-1A.") and zh.startswith("左眼")
    en, _ = write_caption(make_recipe(["normal"], rng), "OCT", "right", rng)
    assert "normal foveal contour" in en


# --- stand-in images for an existing dataframe ---------------------------------------------------

def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_render_for_dataframe(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "frame.csv", FLAIR_HEADER, [
        ["0", "SET/a.jpg", "[]", "['glaucoma']"],
        ["1", "SET/sub/b.png", "[]", "['Haemorrhages.', 'drusens']"],
        ["2", "../x.jpg", "[]", "['normal']"],
        ["3", "/absolute/y.jpg", "[]", "['normal']"],
        ["4", "MM-Retinal/FFA/c.tif", "[]", "['some unknown finding']"],
        ["5", "SET/d.bmp", "['noisy']", "not a list"],
    ])
    root = tmp_path / "root"
    root.mkdir()
    assert render_for_dataframe(table, root, seed=3, image_size=64) == 4
    assert not (tmp_path / "x.jpg").exists()
    formats = {}
    for rel in ("SET/a.jpg", "SET/sub/b.png", "MM-Retinal/FFA/c.tif", "SET/d.bmp"):
        with Image.open(root / rel) as img:
            formats[rel] = (img.format, img.mode, img.size)
    assert formats == {
        "SET/a.jpg": ("JPEG", "RGB", (64, 64)),
        "SET/sub/b.png": ("PNG", "RGB", (64, 64)),
        "MM-Retinal/FFA/c.tif": ("TIFF", "L", (64, 64)),
        "SET/d.bmp": ("BMP", "RGB", (64, 64)),
    }
    again = tmp_path / "again"
    assert render_for_dataframe(table, again, seed=3, image_size=64) == 4
    assert digests(root) == digests(again)
    assert render_for_dataframe(table, tmp_path / "limited", seed=3, image_size=64, limit=2) == 2


def test_render_for_caption_dataframe(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "captions.csv", ["", "image", "caption"], [
        ["0", "MM-Retinal/CFP/f1.jpg", "Colour fundus photograph of the left eye showing drusen."],
        ["1", "MM-Retinal/OCT/f2.png", "OCT B-scan with macular oedema."],
    ])
    assert render_for_dataframe(table, tmp_path / "root", image_size=48) == 2
    with Image.open(tmp_path / "root" / "MM-Retinal" / "OCT" / "f2.png") as img:
        assert img.mode == "L"
    bad = write_csv(tmp_path / "bad.csv", ["path", "label"], [["a.jpg", "x"]])
    with pytest.raises(ValueError):
        render_for_dataframe(bad, tmp_path / "root")
