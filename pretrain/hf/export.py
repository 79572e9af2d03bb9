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
A caption decoder (`model.caption_decoder`, KeepFIT V2) is exported when the run has one; its shape comes from
the run config (the head count is not visible in the weights). Training-only modules (model.auxiliary.*) are
left out. Everything is written into a temporary folder beside OUT and renamed at the end:
an error never leaves a partial OUT. Only safetensors and JSON are written, nothing pickled.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["ExportError", "build_hf_config", "caption_decoder_config", "export_hf", "export_text_only",
           "export_vision_only", "fill_full_export", "image_processor", "model_config_from_run", "write_atomically"]

log = logging.getLogger("pretrain.hf.export")

MODELING_FILE = "modeling_retinascale.py"
DECODER_PREFIX = "caption_decoder."
AUTO_MAP = {
    "AutoConfig": "modeling_retinascale.RetinaScaleConfig",
    "AutoModel": "modeling_retinascale.RetinaScaleModel",
    "AutoModelForZeroShotImageClassification": "modeling_retinascale.RetinaScaleModel",
}
POOLING_NOTES = {"cls": "last_hidden_state[:, 0]",
                 "flair": "mean over tokens (padding included) of hidden_states[1], [2], [-1], then of the three",
                 "flair_masked": "mean over unpadded tokens of hidden_states[1], [2], [-1], then of the three"}
TEXT_CONFIG_DROP = ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype",
                     "_attn_implementation", "_attn_implementation_autoset", "_commit_hash")


class ExportError(ValueError):
    """The checkpoint, its config or OUT do not allow an export; nothing was written at OUT."""


# ----------------------------------------------------------------------------- config


def model_config_from_run(raw: dict[str, Any]) -> Any:
    """The ModelConfig of a resolved run config mapping."""
    from pretrain.config import from_dict
    from pretrain.model import ModelConfig

    return from_dict(ModelConfig, dict(raw.get("model") or {}), where="model")


def text_config_dict(text_cfg: Any) -> dict[str, Any]:
    """The text tower's transformers config (name_or_path's config with the overrides) as a plain dict."""
    from pretrain.towers import text_config

    config = text_config(text_cfg, dict(text_cfg.config_overrides)).to_dict()
    for key in TEXT_CONFIG_DROP:
        config.pop(key, None)
    return config


def caption_decoder_config(state_dict: dict[str, torch.Tensor], cfg: Any) -> dict[str, Any] | None:
    """The caption decoder's full shape (CaptionDecoder's arguments): the run config's decoder section with the
    sizes the towers fixed (vocabulary, image width, nulls) read off the weights; None without a decoder."""
    keys = [k for k in state_dict if k.startswith(DECODER_PREFIX)]
    if not keys and cfg.caption_decoder is None:
        return None
    if cfg.caption_decoder is None:
        raise ExportError("the checkpoint has caption_decoder weights but the run config has no "
                          "model.caption_decoder section")
    try:
        vocab, dim = state_dict[f"{DECODER_PREFIX}token_embed.weight"].shape
        max_len = state_dict[f"{DECODER_PREFIX}pos_embed"].shape[0]
        depth = len({k.split(".")[2] for k in keys if k.startswith(f"{DECODER_PREFIX}layers.")})
        image_dim = state_dict[f"{DECODER_PREFIX}layers.0.cross_kv.weight"].shape[1]
    except KeyError as err:
        raise ExportError(f"caption decoder weights are incomplete: no {err.args[0]!r}") from err
    decoder = cfg.caption_decoder
    if depth != decoder.depth or (decoder.dim is not None and dim != decoder.dim):
        raise ExportError(f"caption decoder weights (depth {depth}, width {dim}) do not match the run config's "
                          f"model.caption_decoder (depth {decoder.depth}, width {decoder.dim})")
    return {"vocab_size": int(vocab), "dim": int(dim), "depth": int(depth), "num_heads": int(decoder.num_heads),
            "max_len": int(max_len), "image_dim": int(image_dim), "mlp_ratio": float(decoder.mlp_ratio)}


def build_hf_config(cfg: Any, decoder: dict[str, Any] | None = None) -> Any:
    """RetinaScaleConfig of a (text-path-resolved) ModelConfig."""
    from pretrain.hf.modeling_retinascale import RetinaScaleConfig

    config = RetinaScaleConfig(
        vision_config={"name": cfg.vision.name, "image_size": int(cfg.vision.image_size),
                       "model_kwargs": dict(cfg.vision.model_kwargs), "pixel_scaling": cfg.vision.pixel_scaling},
        text_config=text_config_dict(cfg.text), embed_dim=int(cfg.embed_dim),
        logit_scale_init_value=math.log(cfg.init_logit_scale), max_logit_scale=float(cfg.max_logit_scale),
        min_logit_scale=float(cfg.min_logit_scale), text_pooling=cfg.text.pooling,
        caption_decoder_config=decoder, max_text_len=int(cfg.text.max_len))
    config.architectures = ["RetinaScaleModel"]
    config.auto_map = dict(AUTO_MAP)
    return config


# ----------------------------------------------------------------------------- checks


def _load_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    from pretrain.state_dicts import StateMismatchError, load_state_strict

    try:
        load_state_strict(model, state_dict, what)
    except StateMismatchError as err:
        raise ExportError(str(err)) from None


def _random_inputs(image_size: int, vocab: int, max_len: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    length = max(2, min(max_len, 12))
    ids = torch.randint(1, vocab, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    return {"pixel_values": torch.randn(2, 3, image_size, image_size, generator=g), "input_ids": ids,
            "attention_mask": mask}


@torch.no_grad()
def verify_against_training_model(model: torch.nn.Module, hf_model: torch.nn.Module, atol: float = 1e-4) -> float:
    """Max abs difference of image and text features between the training model and the exported model."""
    cfg = model.config
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


def write_atomically(out: str | Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """fill(tmp) writes a folder that atomically becomes OUT (shards.atomic.replace_folder); ExportError if OUT
    exists and not overwrite, or is not a folder a model may replace (pretrain.model_folders)."""
    from pretrain.model_folders import check_replaceable
    from shards.atomic import replace_folder

    try:
        if overwrite:
            check_replaceable(out)
        return replace_folder(out, fill, overwrite)
    except FileExistsError as err:
        raise ExportError(str(err)) from None


def _save_safetensors(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(path),
              metadata={"format": "pt", **(metadata or {})})


def image_processor(image_size: int, pixel_scaling: str = "clip") -> Any:
    """pretrain.samples.eval_transform as a CLIPImageProcessor: shard images are square canvases; resize
    (bilinear, antialiased), scale to [0, 1], normalise with the tower's mean/std (CLIP's; none for unit scaling,
    as FLAIR's released models expect). No crop."""
    from transformers import CLIPImageProcessor

    from pretrain.samples import pixel_stats

    mean, std = pixel_stats(pixel_scaling)
    return CLIPImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=2,
                              do_center_crop=False, do_rescale=True, rescale_factor=1 / 255,
                              do_normalize=pixel_scaling != "unit", image_mean=list(mean), image_std=list(std),
                              do_convert_rgb=True)


def fill_full_export(tmp: Path, model: torch.nn.Module, state_dict: dict[str, torch.Tensor], hf_config: Any,
                     tokenizer: Any, card: str, *, verify: bool = True, processor: Any = None,
                     what: str = "the model") -> None:
    """Write a full export of `model` (a RetinaCLIP whose weights are state_dict) into tmp: config.json,
    model.safetensors, the modeling file, the tokenizer, preprocessor_config.json (default: image_processor of
    the model's image size) and README.md (card)."""
    from pretrain.hf.modeling_retinascale import RetinaScaleModel

    hf_model = RetinaScaleModel(hf_config).eval()
    _load_state(hf_model, state_dict, what)
    if verify:
        log.info("export check: max feature difference %.3g", verify_against_training_model(model, hf_model))
    hf_config.save_pretrained(tmp)
    _save_safetensors(state_dict, tmp / "model.safetensors")
    shutil.copyfile(Path(__file__).with_name(MODELING_FILE), tmp / MODELING_FILE)
    tokenizer.save_pretrained(tmp)
    vision = model.config.vision
    (processor or image_processor(int(vision.image_size), vision.pixel_scaling)).save_pretrained(tmp)
    (tmp / "README.md").write_text(card, encoding="utf-8")


def export_vision_only(fill_dir: Path, state_dict: dict[str, torch.Tensor], vision_config: dict[str, Any],
                       embed_dim: int | None = None) -> None:
    """A timm folder: config.json (architecture, model_args, pretrained_cfg) + model.safetensors, loadable with
    timm.create_model("local-dir:FOLDER", pretrained=True); plus projection.safetensors (the image projection
    head's weight) when present."""
    from pretrain.hf.modeling_retinascale import create_vision_model
    from pretrain.samples import pixel_stats

    prefix = "vision_model.model."
    tower = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    model = create_vision_model(vision_config)
    _load_state(model, tower, "vision tower")
    size = int(vision_config["image_size"])
    mean, std = pixel_stats(vision_config.get("pixel_scaling", "clip"))
    model_args = dict(vision_config.get("model_kwargs") or {})
    if "img_size" in inspect.signature(type(model).__init__).parameters:  # ViTs take it, CNNs do not
        model_args["img_size"] = size
    config = {"architecture": vision_config["name"], "num_classes": 0,
              "num_features": int(getattr(model, "num_features", 0)), "model_args": model_args,
              "pretrained_cfg": {"input_size": [3, size, size], "interpolation": "bilinear", "crop_pct": 1.0,
                                 "crop_mode": "center", "mean": list(mean), "std": list(std),
                                 "num_classes": 0, "pool_size": None, "first_conv": None, "classifier": None}}
    (fill_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _save_safetensors(tower, fill_dir / "model.safetensors")
    if "visual_projection.proj.weight" in state_dict:
        _save_safetensors({"weight": state_dict["visual_projection.proj.weight"]}, fill_dir / "projection.safetensors",
                          {"note": "FLAIR head: normalize(W @ normalize(pooled features))"})


def export_text_only(fill_dir: Path, state_dict: dict[str, torch.Tensor], text_config: dict[str, Any],
                     tokenizer: Any, pooling: str = "cls") -> None:
    """A transformers folder for AutoModel.from_pretrained (a BertModel for BERT towers) + the tokenizer, plus
    projection.safetensors (the text projection head's weight). The pooler was never trained (the tower pools
    [CLS] or FLAIR's layer mean, `pooling`, noted in projection.safetensors); it loads freshly initialised."""
    from transformers import AutoConfig, AutoModel

    prefix = "text_model.model."
    tower = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    text = {k: v for k, v in text_config.items() if k not in TEXT_CONFIG_DROP}
    config = AutoConfig.for_model(text.pop("model_type", "bert"), **text)
    model = AutoModel.from_config(config)
    own = model.state_dict()
    pooler = {k: v for k, v in own.items() if k.startswith("pooler.")}
    _load_state(model, {**tower, **pooler}, "text tower")
    model.save_pretrained(fill_dir, safe_serialization=True)
    tokenizer.save_pretrained(fill_dir)
    if "text_projection.proj.weight" in state_dict:
        _save_safetensors({"weight": state_dict["text_projection.proj.weight"]}, fill_dir / "projection.safetensors",
                          {"note": "FLAIR head: normalize(W @ normalize(pooled)); pooled: "
                           + POOLING_NOTES.get(pooling, pooling), "pooling": pooling})


def _refuse_overlap(out: Path, run_dir: Path) -> None:
    """OUT equal to, inside or around the run folder would let --overwrite replace the run itself."""
    out, run_dir = out.resolve(), run_dir.resolve()
    if out == run_dir or run_dir in out.parents or out in run_dir.parents:
        raise ExportError(f"OUT {str(out)!r} overlaps the run folder {str(run_dir)!r}: export next to the run, "
                          "never into it or over it")


def export_hf(checkpoint: str | Path, out: str | Path, *, config: str | Path | None = None,
              eval_results: str | Path | None = None, overwrite: bool = False, verify: bool = True,
              mode: str = "full") -> Path:
    """Export `checkpoint` (run dir, checkpoints dir or tag folder) to OUT; see the module doc. mode: full,
    vision (timm folder) or text (transformers encoder folder)."""
    from pretrain.config import load_yaml
    from pretrain.runs import RunLoadError, load_run

    if mode not in ("full", "vision", "text"):
        raise ValueError(f"mode must be full, vision or text, got {mode!r}")
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the (possibly long) consolidation
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    try:
        run = load_run(checkpoint, config=config)  # training-only modules are not part of the released model
    except RunLoadError as err:
        raise ExportError(str(err)) from None
    _refuse_overlap(out, run.config_path.parent)
    results = json.loads(Path(eval_results).read_text(encoding="utf-8")) if eval_results else None
    state_dict = {k: v.detach().cpu().float() if v.is_floating_point() else v.cpu()
                  for k, v in run.model.state_dict().items()}
    hf_config = build_hf_config(run.model.config, caption_decoder_config(state_dict, run.model.config))
    if mode == "vision":
        return write_atomically(out, lambda tmp: export_vision_only(tmp, state_dict, hf_config.vision_config),
                                overwrite)
    if mode == "text":
        return write_atomically(out, lambda tmp: export_text_only(tmp, state_dict, hf_config.text_config,
                                                                  run.tokenizer, hf_config.text_pooling), overwrite)

    def fill_full(tmp: Path) -> None:
        from pretrain.hf.model_card import last_metrics, model_card

        card = model_card(load_yaml(run.config_path), run.checkpoint.name, hf_config, results,
                          last_metrics(run.config_path))
        fill_full_export(tmp, run.model, state_dict, hf_config, run.tokenizer, card, verify=verify,
                         what=f"model section of {run.config_path}")

    return write_atomically(out, fill_full, overwrite)
