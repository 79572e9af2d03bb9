"""`retina-pretrain eval`: transfer evaluation of a checkpoint, as FLAIR and KeepFIT report it.

    retina-pretrain eval --run RUN_DIR --eval-shards demo-output/shards/eval \
        --retrieval-shards demo-output/shards/elite --report

For each evaluation dataset (samples grouped by their `dataset` field) on frozen embeddings:

- zero-shot: each class's text embedding is the normalised mean over a prompt ensemble from the knowledge
  file (every template filled with the class name, plus its clinical description, FLAIR's approach), and each
  image goes to the most similar class; ACA (balanced accuracy), macro-F1, OvR AUC, confusion matrix, and the
  quadratic kappa for DR grading;
- linear probe: L-BFGS logistic regression trained on a stratified, seeded split of that dataset's samples;
- k-shot probes: the same probe on k training samples per class, repeated with different draws (mean, std);
- retrieval on a captioned set (e.g. the elite set's `val` split): image->text and text->image R@1/5/10.

These are our protocols (--protocol ours, the default). --protocol flair runs FLAIR's instead, as its public
code does (pretrain.flair_protocols: FLAIR's prompts and class lists, zero-shot without renormalising, the
scikit-learn probe on backbone features over 5 seeded 80/20 splits), --protocol both runs both; --adapters
adds FLAIR's few-shot CLIP-Adapter / Tip-Adapter / Tip-Adapter-F (pretrain.adapters). FLAIR's numbers go to
each dataset's `flair` block of metrics.json, ours stay where they were.

Labels. A dataset's classes are the distinct FIRST categories of its samples (FLAIR evaluates with the
dataset's class names; a multi-category sample counts as its first, primary, category), sorted by name,
except for DR grading: when every class is one of the five grades of the knowledge file (no, mild, moderate,
severe, proliferative diabetic retinopathy) the classes keep grade order and the quadratic kappa is reported,
since kappa weighs errors by grade distance. Samples without categories are left out (counted as unlabelled).

Results go to OUT/metrics.json (default RUN_DIR/eval; confusion matrices inside, rows = true classes); with
--report also OUT/report.md and its PNGs (pretrain.report).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.eval_inputs import EvalInputError, finite_or_none, shard_metadata, shard_urls_or_fail
from pretrain.flair_prompts import load_flair_reference
from pretrain.flair_protocols import flair_class_embeddings, flair_labels, score_flair_dataset
from pretrain.metrics import classification_report, retrieval_recall_at_k
from pretrain.probes import k_shot_indices, linear_probe, zero_shot_scores

__all__ = ["DR_GRADES", "EvalConfig", "EvalInputError", "class_order", "class_prompts", "evaluate",
           "load_run_model", "score_dataset", "stratified_split"]

DR_GRADES = ("no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
             "severe diabetic retinopathy", "proliferative diabetic retinopathy")
PROBE_METRICS = ("aca", "macro_f1", "auc", "kappa")
PROTOCOLS = ("ours", "flair", "both")


@dataclass
class EvalConfig:
    run: str | None = None
    """Run folder written by `retina-pretrain train` (its config.yaml builds the model)."""
    checkpoint: str | None = None
    """Checkpoint to load: a run folder, its checkpoints/ folder (uses `latest`) or one tag folder; default: run."""
    eval_shards: str | None = None
    """Shard set of the classification datasets (e.g. demo-output/shards/eval)."""
    split: str = "test"
    """Split of eval_shards to evaluate."""
    retrieval_shards: str | None = None
    """Captioned shard set for image-text retrieval (e.g. the elite set); None skips retrieval."""
    retrieval_split: str = "val"
    """Split of retrieval_shards to evaluate."""
    out: str | None = None
    """Output folder for metrics.json (and the report); default RUN_DIR/eval."""
    batch_size: int = 32
    """Images (and prompts) per forward pass."""
    prompt_ensemble: bool = True
    """Zero-shot class embedding from every template of the knowledge file; false: the first template only."""
    prompt_description: bool = True
    """Add each class's clinical description from the knowledge file to its prompts."""
    linear_probe: bool = True
    """Fit the linear probe (and the k-shot probes) on frozen image embeddings."""
    probe_train_fraction: float = 0.5
    """Share of each class that trains the probes (stratified); the rest is the probes' test set."""
    k_shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    """Training samples per class of the k-shot probes (drawn from the probe's training part)."""
    k_shot_repeats: int = 3
    """Draws per k (seeds seed, seed+1, ...); the report gives the mean and standard deviation."""
    seed: int = 0
    """Seed of the probe train/test split and of the k-shot draws."""
    protocol: str = "ours"
    """Zero-shot and linear-probe protocols: ours, flair (FLAIR's public code: pretrain.flair_protocols) or both."""
    adapters: list[str] = field(default_factory=list)
    """FLAIR's few-shot adapters to run: any of clip_adapter, tip_adapter, tip_adapter_f (--protocol flair/both)."""
    adapter_shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    """Training samples per class of the adapters (FLAIR's --shots_train K; 20% of each class tests)."""
    flair_folds: int = 5
    """Seeded splits (seed = fold) of FLAIR's linear probe and adapters; mean and std over them."""
    crop_foreground: bool = False
    """Crop each classification image to its field of view onto a square canvas, FLAIR's evaluation input
    (pretrain.flair_data.crop_foreground); off: the shard's square canvas, resized."""
    report: bool = False
    """Also write report.md with loss and confusion-matrix PNGs (pretrain.report) into the output folder."""
    device: str | None = None
    """torch device; default cuda when available, else cpu."""


# ----------------------------------------------------------------------------- classes and prompts


def class_order(names: list[str]) -> tuple[list[str], bool]:
    """(classes, is_dr_grading): grade order when every class is a DR grade, else sorted by name."""
    distinct = set(names)
    if distinct and distinct <= set(DR_GRADES):
        return [g for g in DR_GRADES if g in distinct], True
    return sorted(distinct), False


def class_prompts(kb: Any, name: str, *, ensemble: bool = True, description: bool = True) -> list[str]:
    """The prompts whose mean embedding stands for class `name` (kb.prompts ends with the description)."""
    prompts = kb.prompts(name)
    canonical = kb.normalize(name)
    desc = kb.description(canonical) if canonical is not None else None
    templates = [p for p in prompts if p != desc]
    chosen = templates if ensemble else templates[:1]
    return chosen + ([desc] if description and desc else [])


def stratified_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: per class, a seeded shuffle and round(n * train_fraction) to train,
    clamped to [1, n - 1] so every class with two or more samples is on both sides (a single sample trains)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"probe_train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n = members.size
        n_train = n if n < 2 else min(n - 1, max(1, round(n * train_fraction)))
        train.append(members[:n_train])
        test.append(members[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ----------------------------------------------------------------------------- scoring (pure, on embeddings)


@contextlib.contextmanager
def _one_thread():
    """Probe fits are small (N x D by D x C, C ~ 2-10): intra-op threads cost more than they give. Measured
    on a loaded 2-core machine: 6x faster single-threaded at N=8, D=32, and no slower at N=2000, D=512."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def score_dataset(image_emb: torch.Tensor, labels: np.ndarray, class_text_emb: torch.Tensor, classes: list[str],
                  grading: bool, cfg: EvalConfig) -> dict[str, Any]:
    """Zero-shot, linear-probe and k-shot results of one dataset from its embeddings.

    image_emb (N, D); labels (N,) indices into classes; class_text_emb (C, D) class embeddings, or
    (C, P, D) prompt embeddings that probes.zero_shot_scores averages per class.
    """
    num_classes = len(classes)
    result: dict[str, Any] = {"classes": classes, "n": int(labels.size), "grading": grading,
                              "counts": np.bincount(labels, minlength=num_classes).tolist()}
    scores = zero_shot_scores(image_emb, class_text_emb)
    result["zero_shot"] = classification_report(labels, scores.numpy(), num_classes, grading=grading)
    if not cfg.linear_probe:
        return result
    train, test = stratified_split(labels, cfg.probe_train_fraction, cfg.seed)
    if np.unique(labels[test]).size < 2:
        result["linear_probe"] = {"skipped": "fewer than two classes with two or more samples"}
        return result
    with _one_thread():
        result.update(_probes(image_emb, labels, train, test, num_classes, grading, cfg))
    return result


def _probes(image_emb: torch.Tensor, labels: np.ndarray, train: np.ndarray, test: np.ndarray, num_classes: int,
            grading: bool, cfg: EvalConfig) -> dict[str, Any]:
    """The linear probe on all training indices and the k-shot probes on draws from them."""
    result: dict[str, Any] = {}
    x, y = image_emb.float().cpu(), torch.as_tensor(labels)
    probs = linear_probe(x[train], y[train], x[test], num_classes)
    result["linear_probe"] = {**classification_report(labels[test], probs.numpy(), num_classes, grading=grading),
                              "n_train": int(train.size), "n_test": int(test.size)}
    k_shot: dict[str, Any] = {}
    for k in cfg.k_shots:
        runs = []
        for repeat in range(cfg.k_shot_repeats):
            idx = torch.as_tensor(train)[k_shot_indices(y[train], k, cfg.seed + repeat)]
            probs = linear_probe(x[idx], y[idx], x[test], num_classes)
            runs.append(classification_report(labels[test], probs.numpy(), num_classes, grading=grading))
        summary: dict[str, Any] = {"repeats": len(runs)}
        for name in PROBE_METRICS:
            values = [r[name] for r in runs if name in r]
            if values:
                summary[name], summary[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
        k_shot[str(k)] = summary
    result["k_shot"] = k_shot
    return result


# ----------------------------------------------------------------------------- embedding shard sets


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _embed_shards(model: Any, tokenizer: Any, shard_dir: str | Path, split: str, batch_size: int,
                  with_text: bool, with_backbone: bool = False, crop_foreground: bool = False) -> dict[str, Any]:
    """Unit image (and caption) embeddings of every sample of one split, with their keys, on the CPU, and the
    account of samples lost on the way (damaged shards, undecodable samples: pretrain.data_loss); with_backbone
    also the image tower's pooled features (FLAIR's linear probe)."""
    from pretrain.data import LOSSES, DataConfig, eval_dataset

    shard_urls_or_fail(shard_dir, split)
    data_cfg = DataConfig(batch_size=batch_size, image_size=model.config.vision.image_size,
                          max_text_len=model.config.text.max_len, workers=0)
    device = _device(model)
    keys, images, texts, backbone = [], [], [], []
    LOSSES.reset()
    scaling = getattr(model.config.vision, "pixel_scaling", "clip")
    for batch in eval_dataset(shard_dir, split, data_cfg, tokenizer, pixel_scaling=scaling,
                              crop_foreground=crop_foreground):
        keys += batch["keys"]
        images.append(model.get_image_features(batch["image"].to(device)).float().cpu())
        if with_backbone:
            backbone.append(model.get_image_backbone_features(batch["image"].to(device)).float().cpu())
        if with_text:
            texts.append(model.get_text_features(batch["input_ids"].to(device),
                                                 batch["attention_mask"].to(device)).float().cpu())
    if not keys:
        raise EvalInputError(f"{shard_dir}: split {split!r} has no readable samples")
    lost = {shard: n for shard, (n, _) in LOSSES.snapshot()["shards"].items()}
    return {"keys": keys, "image": torch.cat(images), "text": torch.cat(texts) if with_text else None,
            "backbone": torch.cat(backbone) if with_backbone else None, "lost": lost}


@torch.no_grad()
def _embed_prompts(model: Any, tokenizer: Any, prompts: list[str], batch_size: int) -> torch.Tensor:
    device = _device(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size], padding="max_length", truncation=True,
                           max_length=model.config.text.max_len, return_tensors="pt")
        out.append(model.get_text_features(tokens["input_ids"].to(device),
                                           tokens["attention_mask"].to(device)).float().cpu())
    return torch.cat(out)


def _class_text_embeddings(model: Any, tokenizer: Any, classes: list[str], cfg: EvalConfig) -> torch.Tensor:
    """(C, D) unit class embeddings t_c = normalise(mean_p normalise(e_{c,p})), the prompt ensemble of
    probes.zero_shot_scores; built per class because a class outside the knowledge file has no description,
    so classes may have different numbers of prompts."""
    from shards.knowledge import load_knowledge

    kb = load_knowledge()
    lists = [class_prompts(kb, c, ensemble=cfg.prompt_ensemble, description=cfg.prompt_description)
             for c in classes]
    flat = _embed_prompts(model, tokenizer, [p for ps in lists for p in ps], cfg.batch_size)
    per_class = torch.split(torch.nn.functional.normalize(flat, dim=-1), [len(ps) for ps in lists])
    return torch.nn.functional.normalize(torch.stack([e.mean(dim=0) for e in per_class]), dim=-1)


def evaluate(model: Any, tokenizer: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Every metric of the module docstring for `model` (a RetinaCLIP, or anything with its config,
    get_image_features and get_text_features); returns the dict that metrics.json holds."""
    if cfg.eval_shards is None:
        raise EvalInputError("no evaluation shard set given (--eval-shards)")
    ours, flair = cfg.protocol in ("ours", "both"), cfg.protocol in ("flair", "both")
    model.eval()
    meta = shard_metadata(cfg.eval_shards, cfg.split)
    emb = _embed_shards(model, tokenizer, cfg.eval_shards, cfg.split, cfg.batch_size, with_text=False,
                        with_backbone=flair and cfg.linear_probe, crop_foreground=cfg.crop_foreground)
    groups: dict[str, list[int]] = {}
    unlabelled = 0
    for row, key in enumerate(emb["keys"]):
        if meta[key].get("categories"):
            groups.setdefault(str(meta[key].get("dataset", "")), []).append(row)
        else:
            unlabelled += 1
    if not groups:
        raise EvalInputError(f"{cfg.eval_shards}: no sample of split {cfg.split!r} has categories")
    datasets = {}
    for name in sorted(groups):
        rows = groups[name]
        firsts = [meta[emb["keys"][r]]["categories"][0] for r in rows]
        classes, grading = class_order(firsts)
        if len(classes) < 2:
            raise EvalInputError(f"{cfg.eval_shards}: dataset {name!r} has fewer than 2 classes ({classes}); "
                                 "classification needs at least 2")
        datasets[name] = {}
        if ours:
            labels = np.array([classes.index(c) for c in firsts], dtype=np.int64)
            text = _class_text_embeddings(model, tokenizer, classes, cfg)
            datasets[name] = score_dataset(emb["image"][rows], labels, text, classes, grading, cfg)
        if flair:
            datasets[name]["flair"] = _flair_dataset(model, tokenizer, name, rows, emb, meta, classes, cfg)
    result: dict[str, Any] = {"eval_shards": str(cfg.eval_shards), "split": cfg.split, "protocol": cfg.protocol,
                              "adapters": list(cfg.adapters), "unlabelled": unlabelled,
                              "samples_lost": sum(emb["lost"].values()), "lost_by_shard": emb["lost"],
                              "datasets": datasets}
    if cfg.retrieval_shards is not None:
        result["retrieval"] = _retrieval(model, tokenizer, cfg)
        if getattr(model, "caption_decoder", None) is not None:  # KeepFIT V2: BLEU-4 / ROUGE-L of greedy captions
            from pretrain.captioning import evaluate_captions

            result["captioning"] = evaluate_captions(model, tokenizer, cfg.retrieval_shards, cfg.retrieval_split,
                                                     cfg.batch_size)
    return result


def _flair_dataset(model: Any, tokenizer: Any, name: str, rows: list[int], emb: dict[str, Any],
                   meta: dict[str, dict], fallback: list[str], cfg: EvalConfig) -> dict[str, Any]:
    """FLAIR's protocols on one dataset (pretrain.flair_protocols). Samples go in dataframe order (source,
    line), which FLAIR's seeded splits shuffle; samples whose first category is outside the class list
    are left out and counted."""
    samples = [meta[emb["keys"][r]] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (str(samples[i].get("source")), samples[i].get("line") or 0,
                                                    samples[i].get("key", "")))
    samples, rows = [samples[i] for i in order], [rows[i] for i in order]
    raw_firsts = [(s.get("categories_raw") or s["categories"])[0] for s in samples]
    classes, labels, source = flair_labels(name, raw_firsts, [s["categories"][0] for s in samples], fallback)
    keep = np.flatnonzero(labels >= 0)
    picked = torch.as_tensor(np.asarray(rows)[keep])
    prompts = [load_flair_reference().prompts(c) for c in classes]
    flat = _embed_prompts(model, tokenizer, [p for ps in prompts for p in ps], cfg.batch_size)
    class_emb = flair_class_embeddings(list(torch.split(flat, [len(ps) for ps in prompts])))
    backbone = emb["backbone"][picked] if emb["backbone"] is not None else None
    scale = float(model.logit_scale_value().detach())  # the clamped scale the model trained with
    with _one_thread():
        scores = score_flair_dataset(emb["image"][picked], backbone, labels[keep], class_emb, scale, classes,
                                     adapters=list(cfg.adapters), adapter_shots=list(cfg.adapter_shots),
                                     folds=cfg.flair_folds)
    return {"class_list": source, "outside_classes": int(labels.size - keep.size), **scores}


def _retrieval(model: Any, tokenizer: Any, cfg: EvalConfig) -> dict[str, Any]:
    """R@K on the samples that carry a real caption (categorical samples would only bring sampled prompts)."""
    assert cfg.retrieval_shards is not None
    meta = shard_metadata(cfg.retrieval_shards, cfg.retrieval_split)
    emb = _embed_shards(model, tokenizer, cfg.retrieval_shards, cfg.retrieval_split, cfg.batch_size, with_text=True)
    rows = [i for i, key in enumerate(emb["keys"]) if meta[key]["has_caption"]]
    if len(rows) < 2:
        raise EvalInputError(f"{cfg.retrieval_shards}: split {cfg.retrieval_split!r} has {len(rows)} captioned "
                             "samples; retrieval needs at least 2")
    recalls = retrieval_recall_at_k(emb["image"][rows], emb["text"][rows], ks=(1, 5, 10))
    return {"shards": str(cfg.retrieval_shards), "split": cfg.retrieval_split, "n": len(rows),
            "samples_lost": sum(emb["lost"].values()), **recalls}


# ----------------------------------------------------------------------------- loading a run


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None,
                   device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """(model in eval mode, tokenizer, TrainConfig) of a run (pretrain.runs.load_run); bad input is an
    EvalInputError."""
    from pretrain.runs import RunLoadError, load_run

    try:
        run = load_run(run_dir, checkpoint, device=device)
    except RunLoadError as err:
        raise EvalInputError(str(err)) from None
    return run.model, run.tokenizer, run.config


# ----------------------------------------------------------------------------- output


def write_metrics(metrics: dict[str, Any], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(finite_or_none(metrics), indent=2) + "\n", encoding="utf-8")
    return path
