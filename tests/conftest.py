"""Shared test set-up: markers, GPU skipping and the optional third-party reference data."""

from __future__ import annotations

from pathlib import Path

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
