"""Writes a whole synthetic data tree in the on-disk layouts of the real datasets.

    OUT/images/...                      every image; the root all dataframe paths are relative to
    OUT/images/MM-Retinal/{CFP,FFA,OCT}/ and {CFP,FFA,OCT}.csv   the MM-Retinal release layout
    OUT/dataframes/pretraining/*.csv    FLAIR categorical sources and KeepFIT's MM-Retinal caption table
    OUT/dataframes/ffa/FFA.csv          KeepFIT's FFA table (FLAIR layout, caption in categories)
    OUT/dataframes/transferability/classification/*.csv   evaluation sets
    OUT/synth.json                      what was generated

Every image draws from its own generator keyed by (seed, dataset, index), so output is identical
whatever the order of generation.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from shards.synth.captions import write_caption
from shards.synth.elite import MODALITIES, Panel, plan
from shards.synth.recipe import make_recipe
from shards.synth.render import render, save_image
from shards.synth.seeding import image_rng
from shards.synth.sources import EVAL, PUBLIC, Source, split
from shards.synth.tables import write_captions, write_flair, write_release

NOISY = 3.0  # sensor noise multiplier for rows tagged 'noisy'
ELITE = "MM-Retinal"


def synthesize(out: Path, *, public: int = 600, elite: int = 200, eval: int = 200, seed: int = 0,
               image_size: int = 256, progress: bool = True) -> dict:
    """Generate the tree under `out` and return the manifest also written to `out/synth.json`.

    `public` images are split about 40/30/30 over the three categorical sources, `elite` about
    60/25/15 over MM-Retinal CFP/FFA/OCT, and `eval` evenly over the three evaluation sets.
    """
    out = Path(out)
    images, frames = out / "images", out / "dataframes"
    panels = plan(elite, image_rng(seed, ELITE, "plan"))
    counts: dict[str, int] = {}
    with tqdm(total=public + elite + eval, desc="synthetic data", unit="img", disable=not progress) as bar:
        for sources, total, folder in ((PUBLIC, public, "pretraining"),
                                       (EVAL, eval, "transferability/classification")):
            for source, n in zip(sources, split(total, sources)):
                rows = _categorical(source, n, images, seed, image_size, bar)
                write_flair(frames / folder / f"{source.name}.csv", rows)
                counts[source.name] = n
        counts.update(_elite(panels, images, frames, seed, image_size, bar))
    manifest = {
        "seed": seed,
        "image_size": image_size,
        "counts": counts,
        "classes": {s.name: list(s.classes) for s in PUBLIC + EVAL},
    }
    (out / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _categorical(source: Source, n: int, images: Path, seed: int, size: int,
                 bar: tqdm) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    rows = []
    for i in range(n):
        rng = image_rng(seed, source.folder, i)
        row = source.draw(rng, i)
        eye = str(rng.choice(("right", "left")))
        recipe = make_recipe(row.categories, rng)
        noise = NOISY if "noisy" in row.attributes else 1.0
        path = f"{source.folder}/{i:05d}.{source.ext}"
        save_image(render(recipe, "CFP", rng, size, eye, noise_scale=noise), images / path)
        rows.append((path, row.attributes, row.labels))
        bar.update()
    return rows


def _elite(panels: list[Panel], images: Path, frames: Path, seed: int, size: int, bar: tqdm) -> dict[str, int]:
    release: dict[str, list[tuple[str, str, str]]] = {m: [] for m in MODALITIES}
    for panel in panels:
        rng = image_rng(seed, f"{ELITE}/{panel.modality}", panel.index)
        recipe = make_recipe(panel.categories, rng)
        image = render(recipe, panel.modality, rng, size, panel.eye)
        save_image(image, images / ELITE / panel.modality / panel.file)
        release[panel.modality].append((panel.file, *write_caption(recipe, panel.modality, panel.eye, rng,
                                                                    panel.same_as)))
        bar.update()
    for modality, rows in release.items():
        write_release(images / ELITE / f"{modality}.csv", rows)
    write_captions(frames / "pretraining" / "39_MM_Retinal_dataset.csv",
                   [(f"{ELITE}/CFP/{file}", en) for file, en, _ in release["CFP"]])
    write_flair(frames / "ffa" / "FFA.csv", [(f"{ELITE}/FFA/{file}", (), (en,)) for file, en, _ in release["FFA"]])
    return {f"{ELITE}/{modality}": len(rows) for modality, rows in release.items()}
