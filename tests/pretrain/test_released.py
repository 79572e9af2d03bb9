"""retina-pretrain import-checkpoint: released FLAIR / KeepFIT V1 / ViLReF state dicts become export folders.

The checkpoints are built here in the public layouts (FLAIR flair/modeling/model.py FLAIRModel: torchvision
resnet50 with fc = Identity, a transformers BertModel with its pooler, bias-free Linear heads, a 0-d
logit_scale; KeepFIT-CFP keepfit/modeling/model.py KeepFITModel: the same plus `attention.W_{q,k,v,o}`;
ViLReF/clip/model.py CLIP: an OpenAI-style VisualTransformer written here, a BertModel, projection matrices,
inside a Chinese-CLIP training checkpoint), and the imported model's embeddings are compared with a forward
written here from those definitions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from pretrain.cli import main
from pretrain.hf.importer import train_config_from_export
from pretrain.model import build_model
from pretrain.released import ReleasedCheckpointError, read_released_state
from pretrain.released_layouts import map_layout
from pretrain.towers import offline_minilm_path

EMBED, PX, BATCH, SEQ = 24, 64, 3, 13
LOGIT_SCALE = math.log(1 / 0.07) + 0.3


class _Marker:
    """Unpickling this would create a file: proof that a pickle with objects is refused before it runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _flair_parts(seed: int) -> dict[str, torch.nn.Module]:
    """FLAIR's modules, randomly initialised: vision, text (BertModel with pooler), the two heads."""
    import torchvision

    torch.manual_seed(seed)
    vision = torchvision.models.resnet50(weights=None)
    vision.fc = torch.nn.Identity()
    with torch.no_grad():  # random running statistics, so a misnamed norm cannot go unnoticed
        for module in vision.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(1.0, 1.5)
                module.bias.normal_(0, 0.1)
    text = BertModel(BertConfig(**_bert_config()), add_pooling_layer=True)
    return {"vision": vision.eval(), "text": text.eval(), "proj_v": torch.nn.Linear(2048, EMBED, bias=False),
            "proj_t": torch.nn.Linear(32, EMBED, bias=False)}


def _bert_config() -> dict:
    return {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def _flair_state(parts: dict[str, torch.nn.Module], keepfit: bool) -> dict[str, torch.Tensor]:
    state = {f"vision_model.model.{k}": v for k, v in parts["vision"].state_dict().items()}
    state["vision_model.projection_head_vision.projection.weight"] = parts["proj_v"].weight.detach().clone()
    state.update({f"text_model.model.{k}": v for k, v in parts["text"].state_dict().items()})
    state["text_model.model.embeddings.position_ids"] = torch.arange(64)[None]  # as older transformers saved it
    state["text_model.projection_head_text.projection.weight"] = parts["proj_t"].weight.detach().clone()
    state["logit_scale"] = torch.tensor(LOGIT_SCALE)
    if keepfit:  # KeepFITModel.attention = MultiHeadAttention(proj_dim, ..., bias=False)
        for name in ("W_q", "W_k", "W_v", "W_o"):
            state[f"attention.{name}.weight"] = torch.randn(EMBED, EMBED)
    return state


@torch.no_grad()
def _flair_reference(parts, pixels, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAIR VisionModel / TextModel / ProjectionLayer forward (projection=True, norm=True)."""
    def head(x, layer):
        x = x / x.norm(dim=-1, keepdim=True)
        x = layer(x)
        return x / x.norm(dim=-1, keepdim=True)

    image = head(parts["vision"](pixels), parts["proj_v"])
    hidden = parts["text"](input_ids=ids, attention_mask=mask, output_hidden_states=True)["hidden_states"]
    stacked = torch.stack([hidden[1], hidden[2], hidden[-1]])
    text = head(stacked.permute(1, 0, 2, 3).mean(2).mean(1), parts["proj_t"])
    return image, text


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(BATCH, 3, PX + 3, PX - 3, generator=g)
    ids = torch.randint(1000, 5000, (BATCH, SEQ), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, 9:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return pixels, ids, mask


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """The BERT folder a released checkpoint was trained from (here: tiny config + MiniLM's tokenizer)."""
    out = tmp_path_factory.mktemp("bert")
    BertConfig(**_bert_config()).save_pretrained(out)
    AutoTokenizer.from_pretrained(offline_minilm_path()).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    """FLAIR- and KeepFIT-layout files of the same random weights, and the modules they came from."""
    folder = tmp_path_factory.mktemp("released")
    parts = _flair_parts(21)
    files = {}
    for fmt in ("flair", "keepfit"):
        files[fmt] = folder / f"{fmt}.pth"
        torch.save(_flair_state(parts, keepfit=fmt == "keepfit"), files[fmt])
    return {"parts": parts, "files": files}


def _import(file: Path, fmt: str, out: Path, text_dir: Path, capsys) -> tuple[int, str]:
    code = main(["import-checkpoint", "--format", fmt, str(file), "--out", str(out), "--text", str(text_dir),
                 "--image_size", str(PX)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["flair", "keepfit"])
def test_imported_checkpoint_embeds_like_flair(fmt, released, text_dir, tmp_path, capsys):
    out = tmp_path / "export"
    code, err = _import(released["files"][fmt], fmt, out, text_dir, capsys)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "README.md", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["text_pooling"] == "flair" and config["min_logit_scale"] == 1.0
    assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is False
    # model.init_from on the folder (through import-hf's config) builds the same model
    model = build_model(train_config_from_export(out).model).eval()
    pixels, ids, mask = _inputs(22)
    image_ref, text_ref = _flair_reference(released["parts"], pixels, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixels), image_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.get_text_features(ids, mask), text_ref, atol=1e-5, rtol=1e-5)
        assert model.logit_scale_value().item() == pytest.approx(math.exp(LOGIT_SCALE), rel=1e-6)
    if fmt == "keepfit":
        assert "attention.W_q.weight" in (out / "README.md").read_text()


def test_keepfit_file_as_flair_lists_the_extra_keys(released, text_dir, tmp_path, capsys):
    code, err = _import(released["files"]["keepfit"], "flair", tmp_path / "out", text_dir, capsys)
    assert code == 1
    assert "not in the model" in err and "attention.W_q.weight" in err
    assert not (tmp_path / "out").exists()


def test_mismatching_file_is_refused_listing_the_keys(released, text_dir, tmp_path, capsys):
    state = _flair_state(released["parts"], keepfit=False)
    state["vision_model.model.layer1.0.conv9.weight"] = state.pop("vision_model.model.layer1.0.conv1.weight")
    state["text_model.projection_head_text.projection.weight"] = torch.randn(EMBED, 31)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    code, err = _import(bad, "flair", tmp_path / "out", text_dir, capsys)
    assert code == 1
    assert "missing in the checkpoint: vision_model.model.layer1.0.conv1.weight" in err
    assert "not in the model: vision_model.model.layer1.0.conv9.weight" in err
    assert "text_projection.proj.weight: checkpoint (24, 31) vs config (24, 32)" in err
    assert not (tmp_path / "out").exists()


def test_pickle_with_objects_is_refused_before_it_runs(text_dir, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"logit_scale": torch.tensor(1.0), "extra": _Marker(str(marker))}, evil)
    code, err = _import(evil, "flair", tmp_path / "out", text_dir, capsys)
    assert code == 1
    assert "pickled objects" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_wrapped_and_ddp_prefixed_state_dicts_are_read(tmp_path):
    weights = {"module.logit_scale": torch.tensor(2.0), "module.x.weight": torch.ones(2, 3)}
    torch.save({"state_dict": weights}, tmp_path / "w.pth")
    state = read_released_state(tmp_path / "w.pth")
    assert set(state) == {"logit_scale", "x.weight"}
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ReleasedCheckpointError, match="not a state dict"):
        read_released_state(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleasedCheckpointError, match="not a readable torch checkpoint"):
        read_released_state(tmp_path / "junk.pth")


# ----------------------------------------------------------------------------- ViLReF (Chinese-CLIP layout)

class _QuickGELU(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _Block(torch.nn.Module):
    """ViLReF/clip/model.py ResidualAttentionBlock (no flash attention): sequence-first nn.MultiheadAttention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_1 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential()
        self.mlp.add_module("c_fc", torch.nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", torch.nn.Linear(4 * width, width))
        self.ln_2 = torch.nn.LayerNorm(width)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _VisualTransformer(torch.nn.Module):
    """ViLReF/clip/model.py VisualTransformer.forward (mask_ratio 0)."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, out: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = torch.nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(*[_Block(width, heads) for _ in range(layers)])
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.randn(width, out) * width ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding)
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


@pytest.fixture(scope="module")
def vilref(tmp_path_factory) -> dict:
    """A Chinese-CLIP training checkpoint (epoch, step, name, module.-prefixed state_dict, optimizer)."""
    torch.manual_seed(31)
    visual = _VisualTransformer(PX, 16, 128, 2, 2, EMBED).eval()
    with torch.no_grad():  # non-trivial norms
        for module in visual.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    bert = BertModel(BertConfig(**_bert_config()), add_pooling_layer=True).eval()
    text_projection = torch.randn(32, EMBED) * 32 ** -0.5
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state.update({f"bert.{k}": v for k, v in bert.state_dict().items()})
    state.update(text_projection=text_projection, logit_scale=torch.tensor(LOGIT_SCALE))
    file = tmp_path_factory.mktemp("vilref") / "epoch_latest.pt"
    torch.save({"epoch": 3, "step": 30, "name": "vilref", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}, file)
    return {"file": file, "visual": visual, "bert": bert, "text_projection": text_projection}


def test_imported_vilref_checkpoint_embeds_like_chinese_clip(vilref, text_dir, tmp_path, capsys):
    out = tmp_path / "export"
    code = main(["import-checkpoint", "--format", "vilref", str(vilref["file"]), "--out", str(out), "--text",
                 str(text_dir)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["text_pooling"] == "cls" and config["vision_config"]["image_size"] == PX
    assert json.loads((out / "preprocessor_config.json").read_text())["do_normalize"] is True
    model = build_model(train_config_from_export(out).model).eval()
    g = torch.Generator().manual_seed(32)
    pixels = torch.randn(BATCH, 3, PX, PX, generator=g)
    _, ids, mask = _inputs(33)
    with torch.no_grad():  # CLIP.encode_image / encode_text (mask = ids != [PAD]), then L2-normalised
        image_ref = torch.nn.functional.normalize(vilref["visual"](pixels), dim=-1)
        cls = vilref["bert"](ids, attention_mask=ids.ne(0).long())[0][:, 0]
        text_ref = torch.nn.functional.normalize(cls @ vilref["text_projection"], dim=-1)
        torch.testing.assert_close(model.get_image_features(pixels), image_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.get_text_features(ids, mask), text_ref, atol=1e-5, rtol=1e-5)
    assert "bert.pooler.dense.weight" in (out / "README.md").read_text()


def test_vilref_resnet_and_a_wrong_image_size_are_refused(vilref):
    with pytest.raises(ReleasedCheckpointError, match="ModifiedResNet"):
        map_layout({"visual.attnpool.c_proj.weight": torch.zeros(2, 2)}, "vilref")
    state = read_released_state(vilref["file"])
    with pytest.raises(ReleasedCheckpointError, match=f"fix the image size at {PX}, not 224"):
        map_layout(state, "vilref", image_size=224)
    with pytest.raises(ReleasedCheckpointError, match="format must be one of flair, keepfit, vilref"):
        map_layout(state, "clip")


@pytest.mark.multiproc
def test_flair_release_trains_evaluates_and_exports(released, text_dir, tiny_shards, tmp_path, capsys):
    """Issue 15's path end to end: a FLAIR-layout release -> import-checkpoint -> import-hf -> a FLAIR-style run
    under DeepSpeed with 2 processes -> eval with FLAIR's protocols and adapters -> export-hf. The export of the
    run's step 0 embeds exactly as the released weights (FLAIR's own forward, written in this module). A
    keepfit_v1 run also starts from the same import (KeepFIT V1 continues from FLAIR)."""
    import os
    import subprocess
    import sys

    from transformers import AutoModel

    from pretrain.engine import free_port

    imported, config = tmp_path / "imported", tmp_path / "ft.yaml"
    code, err = _import(released["files"]["flair"], "flair", imported, text_dir, capsys)
    assert code == 0, err
    assert main(["import-hf", str(imported), "--out", str(config)]) == 0, capsys.readouterr().err
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "pretrain", "train", "--config", str(config), "--run.dir", str(run), "--run.steps", "2",
           "--run.save_initial", "true", "--run.log_every", "1", "--method", "flair",
           "--data.public", str(tiny_shards["public"]), "--data.elite", str(tiny_shards["elite"]),
           "--data.style", "flair", "--data.balance_datasets", "true", "--data.hold_out", "[cataract, myop]",
           "--data.batch_size", "4", "--data.image_size", str(PX), "--data.max_text_len", "16",
           "--data.workers", "0", "--data.shuffle_buffer", "8", "--engine.zero_stage", "2",
           "--engine.warmup_steps", "1"]
    trained = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], env=env,
                             timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "world 2" in trained.stdout and (run / "checkpoints" / "step00000000").is_dir()

    out = tmp_path / "eval"
    assert main(["eval", "--run", str(run), "--eval-shards", str(tiny_shards["eval"]), "--out", str(out),
                 "--protocol", "flair", "--adapters", "clip_adapter", "tip_adapter", "tip_adapter_f",
                 "--adapter-shots", "2", "--flair-folds", "2", "--crop_foreground", "true"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    glaucoma = metrics["datasets"]["SYNTH_GLAUCOMA"]["flair"]
    assert {"zero_shot", "linear_probe"} <= set(glaucoma)
    assert set(glaucoma["adapters"]) == {"clip_adapter", "tip_adapter", "tip_adapter_f"}

    # KeepFIT V1 continues from FLAIR's weights: the same imported folder starts a keepfit_v1 run
    keepfit = subprocess.run([sys.executable, "-m", "pretrain", "train", "--config", str(config), "--run.dir",
                              str(tmp_path / "keepfit"), "--run.steps", "1", "--method", "keepfit_v1",
                              "--data.mix", "paired", "--data.public", str(tiny_shards["public"]), "--data.elite",
                              str(tiny_shards["elite"]), "--data.batch_size", "4", "--data.elite_batch_size", "2",
                              "--data.image_size", str(PX), "--data.max_text_len", "16", "--data.workers", "0",
                              "--data.shuffle_buffer", "8", "--engine.warmup_steps", "1"],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], env=env,
                             timeout=600)
    assert keepfit.returncode == 0, keepfit.stdout[-3000:] + keepfit.stderr[-3000:]
    assert "method keepfit_v1" in keepfit.stdout

    exported = tmp_path / "exported"
    assert main(["export-hf", str(run / "checkpoints" / "step00000000"), str(exported)]) == 0, capsys.readouterr().err
    assert json.loads((exported / "preprocessor_config.json").read_text())["do_normalize"] is False
    model = AutoModel.from_pretrained(exported, trust_remote_code=True).eval()
    pixels, ids, mask = _inputs(23)
    image_ref, text_ref = _flair_reference(released["parts"], pixels, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixel_values=pixels), image_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.get_text_features(input_ids=ids, attention_mask=mask), text_ref,
                                   atol=1e-5, rtol=1e-5)
