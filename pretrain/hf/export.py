"""`retina-pretrain export-hf CHECKPOINT OUT`: a DeepSpeed checkpoint as a transformers directory.

    retina-pretrain export-hf runs/demo_cpu exported/demo              # run dir, checkpoints dir or tag folder
    retina-pretrain export-hf runs/demo_cpu exported/demo --eval eval.json --overwrite
    retina-pretrain export-hf runs/demo_cpu exported/vision --vision-only   # timm folder (local-dir:...)
    retina-pretrain export-hf runs/demo_cpu exported/text --text-only       # HF BertModel folder + tokenizer

OUT holds

    config.json                 RetinaScaleConfig: vision_config (timm), text_config (transformers), embed_dim,
                                logit_scale, optional caption_decoder_config, model_type and auto_map
    model.safetensors           the consolidated fp32 state dict, the training model's own key names
    modeling_retinascale.py     the trust_remote_code model (imports only torch, transformers, timm)
    tokenizer files             from the text tower's tokenizer
    preprocessor_config.json    a CLIPImageProcessor: resize to the square training canvas, CLIP mean/std
    README.md                   model card: training config, data summary, evaluation table

    model = AutoModel.from_pretrained(OUT, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(OUT, trust_remote_code=True)        # a BertTokenizer
    processor = AutoImageProcessor.from_pretrained(OUT, trust_remote_code=True)   # a CLIPImageProcessor
    pipeline("zero-shot-image-classification", model=OUT, trust_remote_code=True)(image, candidate_labels=[...])

(AutoTokenizer reads config.json, whose auto_map names remote code: without trust_remote_code=True
transformers asks on the terminal, then falls back to a plain config; the tokenizer loads either way.)

The checkpoint is consolidated by pretrain.consolidate (ZeRO 0-3; every file checked with
torch.load(weights_only=True) first). The model section of RUN_DIR/config.yaml (or --config) must describe
the weights: the state dict is loaded strictly into the exported model, and (unless --no-verify) the
training model's image and text features are compared with the exported model's on random inputs.
A caption decoder (`caption_decoder.*` weights, KeepFIT V2) is exported when present; its head count is not
visible in the weights, so it comes from the run config (model.caption_decoder.num_heads) or
--caption-decoder-heads. Everything is written into a temporary folder beside OUT and renamed at the end:
an error never leaves a partial OUT. Only safetensors and JSON are written, nothing pickled.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from pretrain.consolidate import CheckpointError, find_run_config, load_model_state_dict, resolve_checkpoint

__all__ = ["ExportError", "build_hf_config", "caption_decoder_config", "export_hf", "export_text_only",
           "export_vision_only", "model_config_from_run", "write_atomically"]

log = logging.getLogger("pretrain.hf.export")

MODELING_FILE = "modeling_retinascale.py"
DECODER_PREFIX = "caption_decoder."
AUTO_MAP = {
    "AutoConfig": "modeling_retinascale.RetinaScaleConfig",
    "AutoModel": "modeling_retinascale.RetinaScaleModel",
    "AutoModelForZeroShotImageClassification": "modeling_retinascale.RetinaScaleModel",
}
_TEXT_CONFIG_DROP = ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype",
                     "_attn_implementation", "_attn_implementation_autoset", "_commit_hash")


class ExportError(ValueError):
    """The checkpoint, its config or OUT do not allow an export; nothing was written at OUT."""


# ----------------------------------------------------------------------------- config


def model_config_from_run(raw: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """(ModelConfig, raw caption-decoder section or None) from a resolved run config mapping."""
    from pretrain.config import from_dict
    from pretrain.model import ModelConfig

    model = dict(raw.get("model") or {})
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    decoder = model.get("caption_decoder")
    if "caption_decoder" not in fields:
        model.pop("caption_decoder", None)
    decoder = decoder if isinstance(decoder, dict) else None
    cfg = from_dict(ModelConfig, model, where="model")
    return cfg, decoder


def _resolve_text(cfg: Any) -> Any:
    from pretrain.train import resolve_text_path

    text = dataclasses.replace(cfg.text, name_or_path=resolve_text_path(cfg.text.name_or_path))
    return dataclasses.replace(cfg, text=text)


def text_config_dict(text_cfg: Any) -> dict[str, Any]:
    """The text tower's transformers config (name_or_path's config with the overrides) as a plain dict."""
    from pretrain.model import _text_config

    config = _text_config(text_cfg, dict(text_cfg.config_overrides)).to_dict()
    for key in _TEXT_CONFIG_DROP:
        config.pop(key, None)
    return config


def caption_decoder_config(state_dict: dict[str, torch.Tensor], num_heads: int | None) -> dict[str, Any] | None:
    """CaptionDecoder's arguments read off its weights (all but num_heads, which must be given)."""
    keys = [k for k in state_dict if k.startswith(DECODER_PREFIX)]
    if not keys:
        return None
    try:
        vocab, dim = state_dict[f"{DECODER_PREFIX}token_embed.weight"].shape
        max_len = state_dict[f"{DECODER_PREFIX}pos_embed"].shape[0]
        depth = len({k.split(".")[2] for k in keys if k.startswith(f"{DECODER_PREFIX}layers.")})
        hidden = state_dict[f"{DECODER_PREFIX}layers.0.mlp.0.weight"].shape[0]
        image_dim = state_dict[f"{DECODER_PREFIX}layers.0.cross_kv.weight"].shape[1]
    except KeyError as err:
        raise ExportError(f"caption decoder weights are incomplete: no {err.args[0]!r}") from err
    if num_heads is None:
        raise ExportError("the checkpoint has a caption decoder, but its number of attention heads is unknown: "
                          "set model.caption_decoder.num_heads in the run config or pass --caption-decoder-heads")
    if dim % num_heads:
        raise ExportError(f"caption decoder width {dim} is not divisible by num_heads={num_heads}")
    return {"vocab_size": int(vocab), "dim": int(dim), "depth": int(depth), "num_heads": int(num_heads),
            "max_len": int(max_len), "image_dim": int(image_dim), "mlp_ratio": hidden / dim}


def build_hf_config(cfg: Any, decoder: dict[str, Any] | None = None) -> Any:
    """RetinaScaleConfig of a (text-path-resolved) ModelConfig."""
    from pretrain.hf.modeling_retinascale import RetinaScaleConfig

    config = RetinaScaleConfig(
        vision_config={"name": cfg.vision.name, "image_size": int(cfg.vision.image_size),
                       "model_kwargs": dict(cfg.vision.model_kwargs)},
        text_config=text_config_dict(cfg.text), embed_dim=int(cfg.embed_dim),
        logit_scale_init_value=math.log(cfg.init_logit_scale), max_logit_scale=float(cfg.max_logit_scale),
        caption_decoder_config=decoder, max_text_len=int(cfg.text.max_len))
    config.architectures = ["RetinaScaleModel"]
    config.auto_map = dict(AUTO_MAP)
    return config


# ----------------------------------------------------------------------------- checks


def _load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs config {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"the config does not match the weights ({what})"]
        for title, items in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                             ("shape mismatch", shapes)):
            if items:
                more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
                lines.append(f"  {title}: {', '.join(items[:8])}{more}")
        raise ExportError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _random_inputs(image_size: int, vocab: int, max_len: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    length = max(2, min(max_len, 12))
    ids = torch.randint(1, vocab, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    return {"pixel_values": torch.randn(2, 3, image_size, image_size, generator=g), "input_ids": ids,
            "attention_mask": mask}


@torch.no_grad()
def verify_against_training_model(cfg: Any, state_dict: dict[str, torch.Tensor], hf_model: torch.nn.Module,
                                  atol: float = 1e-4) -> float:
    """Max abs difference of image and text features between the training model and the exported model."""
    from pretrain.model import build_model

    plain = dataclasses.replace(
        cfg, init_from=None,
        vision=dataclasses.replace(cfg.vision, attention_backend=None, pretrained_path=None, grad_checkpointing=False),
        text=dataclasses.replace(cfg.text, attention_backend=None, grad_checkpointing=False, random_init=True))
    model = build_model(plain).eval()
    _load_strict(model, {k: v for k, v in state_dict.items() if not k.startswith(DECODER_PREFIX)},
                 "training model")
    x = _random_inputs(cfg.vision.image_size, hf_model.config.text_config.get("vocab_size", 100), cfg.text.max_len)
    diff = max((model.get_image_features(x["pixel_values"]) - hf_model.get_image_features(x["pixel_values"]))
               .abs().max().item(),
               (model.get_text_features(x["input_ids"], x["attention_mask"])
                - hf_model.get_text_features(x["input_ids"], x["attention_mask"])).abs().max().item())
    if not diff <= atol:
        raise ExportError(f"the exported model's features differ from the training model's by {diff:.3g} "
                          f"(> {atol})")
    return diff


# ----------------------------------------------------------------------------- writing


def _ordinary_permissions(folder: Path) -> None:
    """mkdtemp makes a 0700 folder and safetensors writes 0600 files; give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_atomically(out: str | Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """fill(tmp) writes into a fresh temporary folder beside OUT, which is then renamed to OUT; on any error the
    temporary folder is removed and OUT is untouched."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{str(out)!r} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        _ordinary_permissions(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_safetensors(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(path),
              metadata={"format": "pt", **(metadata or {})})


def _image_processor(image_size: int) -> Any:
    from transformers import CLIPImageProcessor

    from pretrain.data import CLIP_MEAN, CLIP_STD

    # pretrain.data.eval_transform: shard images are square canvases; resize (bilinear, antialiased), scale to
    # [0, 1], normalise with CLIP's mean/std. No crop.
    return CLIPImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=2,
                              do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def _index_summary(shard_dir: Any) -> str:
    if not shard_dir:
        return "none"
    index = Path(str(shard_dir)) / "index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"`{Path(str(shard_dir)).name}` (index.json not available at export time)"
    shards = data.get("shards") or []
    total = data.get("total_samples") or data.get("num_samples")
    if total is None and isinstance(shards, list):
        total = sum(int(s.get("count", s.get("samples", 0)) or 0) for s in shards if isinstance(s, dict))
    return f"`{Path(str(shard_dir)).name}`: {len(shards)} shards, {total} samples"


def _eval_table(results: dict[str, Any] | None) -> str:
    if not results:
        return "Not evaluated at export time (pass `--eval RESULTS.json` to `retina-pretrain export-hf`).\n"
    rows = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {prefix} | {value:.4g} |")
        else:
            rows.append(f"| {prefix} | {value} |")

    walk("", results)
    return "| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def model_card(raw: dict[str, Any], tag: str, hf_config: Any, eval_results: dict[str, Any] | None,
               last_metrics: dict[str, Any] | None) -> str:
    import yaml

    data = raw.get("data") or {}
    decoder = "yes (`caption_logits`)" if hf_config.caption_decoder_config else "no"
    train_line = ""
    if last_metrics:
        train_line = (f"- last logged training step: {last_metrics.get('step')}, loss "
                      f"{last_metrics.get('loss', float('nan')):.4f}\n")
    return f"""---
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags: [retinascale, retina, fundus, clip, vision-language]
---

# RetinaScale {raw.get('method', 'clip')} model (checkpoint `{tag}`)

A retinal image-text dual encoder trained with retinascale: a timm `{hf_config.vision_config['name']}`
image tower at {hf_config.vision_config['image_size']} px, a `{hf_config.text_config.get('model_type')}` text
tower with [CLS] pooling, FLAIR projection heads into a {hf_config.embed_dim}-d space. Caption decoder: {decoder}.

```python
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, pipeline

model = AutoModel.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)   # reads config.json: say so, or
processor = AutoImageProcessor.from_pretrained(PATH, trust_remote_code=True)  # transformers asks interactively
image_embeds = model.get_image_features(**processor(images=image, return_tensors="pt"))
text_embeds = model.get_text_features(**tokenizer(["a fundus photograph of diabetic retinopathy"],
                                                  return_tensors="pt", padding=True))
classify = pipeline("zero-shot-image-classification", model=PATH, trust_remote_code=True)
```

Images: resize to the square canvas, scale to [0, 1], normalise with CLIP's mean/std (no crop), as in training.

## Data

- method: `{raw.get('method')}`, loss weights: `{raw.get('loss_weights')}`
- public set: {_index_summary(data.get('public'))}
- elite set: {_index_summary(data.get('elite'))}
{train_line}
## Evaluation

{_eval_table(eval_results)}
## Training config

```yaml
{yaml.safe_dump(raw, sort_keys=False, default_flow_style=None).rstrip()}
```
"""


def _last_metrics(run_config: Path) -> dict[str, Any] | None:
    path = run_config.parent / "metrics.jsonl"
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _tokenizer(cfg: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.text.name_or_path)


def export_vision_only(fill_dir: Path, state_dict: dict[str, torch.Tensor], vision_config: dict[str, Any],
                       embed_dim: int | None = None) -> None:
    """A timm folder: config.json (architecture, model_args, pretrained_cfg) + model.safetensors, loadable with
    timm.create_model("local-dir:FOLDER", pretrained=True); plus projection.safetensors (the image projection
    head's weight) when present."""
    from pretrain.data import CLIP_MEAN, CLIP_STD
    from pretrain.hf.modeling_retinascale import create_vision_model

    prefix = "vision_model.model."
    tower = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    model = create_vision_model(vision_config)
    _load_strict(model, tower, "vision tower")
    size = int(vision_config["image_size"])
    model_args = dict(vision_config.get("model_kwargs") or {})
    if "img_size" in inspect.signature(type(model).__init__).parameters:  # ViTs take it, CNNs do not
        model_args["img_size"] = size
    config = {"architecture": vision_config["name"], "num_classes": 0,
              "num_features": int(getattr(model, "num_features", 0)), "model_args": model_args,
              "pretrained_cfg": {"input_size": [3, size, size], "interpolation": "bilinear", "crop_pct": 1.0,
                                 "crop_mode": "center", "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                                 "num_classes": 0, "pool_size": None, "first_conv": None, "classifier": None}}
    (fill_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _save_safetensors(tower, fill_dir / "model.safetensors")
    if "visual_projection.proj.weight" in state_dict:
        _save_safetensors({"weight": state_dict["visual_projection.proj.weight"]}, fill_dir / "projection.safetensors",
                          {"note": "FLAIR head: normalize(W @ normalize(pooled features))"})


def export_text_only(fill_dir: Path, state_dict: dict[str, torch.Tensor], text_config: dict[str, Any],
                     tokenizer: Any) -> None:
    """A transformers folder for AutoModel.from_pretrained (a BertModel for BERT towers) + the tokenizer, plus
    projection.safetensors (the text projection head's weight). The pooler was never trained (the tower pools
    [CLS]): use last_hidden_state[:, 0]; the pooler loads with its fresh initialisation."""
    from transformers import AutoConfig, AutoModel

    prefix = "text_model.model."
    tower = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    text = {k: v for k, v in text_config.items() if k not in _TEXT_CONFIG_DROP}
    config = AutoConfig.for_model(text.pop("model_type", "bert"), **text)
    model = AutoModel.from_config(config)
    own = model.state_dict()
    pooler = {k: v for k, v in own.items() if k.startswith("pooler.")}
    _load_strict(model, {**tower, **pooler}, "text tower")
    model.save_pretrained(fill_dir, safe_serialization=True)
    tokenizer.save_pretrained(fill_dir)
    if "text_projection.proj.weight" in state_dict:
        _save_safetensors({"weight": state_dict["text_projection.proj.weight"]}, fill_dir / "projection.safetensors",
                          {"note": "FLAIR head: normalize(W @ normalize(last_hidden_state[:, 0]))"})


TRAINING_ONLY = ("revision_attention.", "momentum_encoder.", "feature_queue.")


def _objective_decoder_heads(raw: dict[str, Any]) -> int | None:
    """The caption decoder's head count as the run's objective built it (KeepFIT V2's decoder_heads)."""
    if not raw.get("method"):
        return None
    from pretrain.objectives import build_objective

    return getattr(build_objective(raw["method"], **(raw.get("objective") or {})), "decoder_heads", None)


def export_hf(checkpoint: str | Path, out: str | Path, *, config: str | Path | None = None,
              eval_results: str | Path | None = None, caption_decoder_heads: int | None = None,
              overwrite: bool = False, verify: bool = True, mode: str = "full") -> Path:
    """Export `checkpoint` (run dir, checkpoints dir or tag folder) to OUT; see the module doc. mode: full,
    vision (timm folder) or text (transformers encoder folder)."""
    from pretrain.config import load_yaml

    if mode not in ("full", "vision", "text"):
        raise ValueError(f"mode must be full, vision or text, got {mode!r}")
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the (possibly long) consolidation
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    tag_dir = resolve_checkpoint(checkpoint)
    config_path = Path(config) if config else find_run_config(tag_dir)
    raw = load_yaml(config_path)
    try:
        cfg, decoder_raw = model_config_from_run(raw)
    except (ValueError, TypeError) as err:
        raise ExportError(f"{config_path}: {err}") from err
    cfg = _resolve_text(cfg)
    results = json.loads(Path(eval_results).read_text(encoding="utf-8")) if eval_results else None
    # Training-only parts of a method (KeepFIT V1's revision attention, ViLReF's momentum encoders and queues)
    # are not part of the released model.
    state_dict = {k: v for k, v in load_model_state_dict(tag_dir).items() if not k.startswith(TRAINING_ONLY)}
    heads = caption_decoder_heads or (decoder_raw or {}).get("num_heads") or _objective_decoder_heads(raw)
    decoder = caption_decoder_config(state_dict, heads)
    hf_config = build_hf_config(cfg, decoder)

    def fill_full(tmp: Path) -> None:
        from pretrain.hf.modeling_retinascale import RetinaScaleModel

        model = RetinaScaleModel(hf_config).eval()
        _load_strict(model, state_dict, f"model section of {config_path}")
        if verify:
            diff = verify_against_training_model(cfg, state_dict, model)
            log.info("export check: max feature difference %.3g", diff)
        hf_config.save_pretrained(tmp)
        _save_safetensors(state_dict, tmp / "model.safetensors")
        shutil.copyfile(Path(__file__).with_name(MODELING_FILE), tmp / MODELING_FILE)
        _tokenizer(cfg).save_pretrained(tmp)
        _image_processor(int(cfg.vision.image_size)).save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(raw, tag_dir.name, hf_config, results, _last_metrics(config_path)),
                                       encoding="utf-8")

    if mode == "vision":
        return write_atomically(out, lambda tmp: export_vision_only(tmp, state_dict, hf_config.vision_config),
                                overwrite)
    if mode == "text":
        return write_atomically(out, lambda tmp: export_text_only(tmp, state_dict, hf_config.text_config,
                                                                  _tokenizer(cfg)), overwrite)
    return write_atomically(out, fill_full, overwrite)
