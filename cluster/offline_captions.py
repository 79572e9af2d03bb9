"""KeepFIT V1's offline variant input: each public sample's nearest elite caption, from two embedding stores.

    write_offline_captions("public.zarr", "elite.zarr", "captions.json")   # then objective.offline_captions

Both stores come from `retina-cluster embed` with the same model; "nearest" is the most similar unit image
embedding (nearest neighbour = the revision attention with a hard argmax; pretrain.objectives.keepfit_v1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cluster.store import read_embeddings

__all__ = ["nearest_elite_captions", "write_offline_captions"]


def nearest_elite_captions(public_keys: list[str], public_emb: np.ndarray, elite_emb: np.ndarray,
                           elite_captions: list[str]) -> dict[str, str]:
    """{public key: caption of the elite sample whose (unit) image embedding is most similar}."""
    nearest = np.argmax(np.asarray(public_emb) @ np.asarray(elite_emb).T, axis=1)
    return {key: elite_captions[j] for key, j in zip(public_keys, nearest.tolist())}


def write_offline_captions(public_store: str | Path, elite_store: str | Path, out: str | Path) -> Path:
    """The offline variant's input file from two embedding stores made with the same model."""
    pub, eli = read_embeddings(public_store), read_embeddings(elite_store)
    keep_p, keep_e = np.asarray(pub["valid"]), np.asarray(eli["valid"])
    mapping = nearest_elite_captions([str(k) for k in np.asarray(pub["keys"])[keep_p]], pub["image_embeds"][keep_p],
                                     eli["image_embeds"][keep_e], [str(t) for t in np.asarray(eli["text"])[keep_e]])
    out = Path(out)
    out.write_text(json.dumps(mapping, indent=1) + "\n", encoding="utf-8")
    return out
