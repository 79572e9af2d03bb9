"""Test scaffolding shared by the test packages (not part of the library).

- `tiny_model_config`: a seconds-fast, fully offline RetinaCLIP configuration.
- `shard_captions`: the captions stored in one split of a shard set, by sample key.
- `run_ranks`: run a function in `world` spawned processes that form one torch.distributed job (CPU, gloo) and
  collect what each rank returns.

Only the standard library and torch are imported at module level: spawned ranks import this module to find
their entry point, and they should not pay for the model stack unless the function they run needs it.
"""

from __future__ import annotations

import os
import pickle
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

if TYPE_CHECKING:
    from pretrain.model import CaptionDecoderConfig, ModelConfig


def tiny_model_config(vision: str = "vit", caption_decoder: CaptionDecoderConfig | None = None) -> ModelConfig:
    """A seconds-fast, fully offline model: a 2-block ViT-Tiny at 64 px (or resnet18 with vision="resnet") and
    a 2-layer, 32-wide random BERT that keeps MiniLM's config and tokenizer (random_init + config_overrides)."""
    from pretrain.model import ModelConfig, TextConfig, VisionConfig
    from pretrain.towers import offline_minilm_path

    if vision == "vit":
        vision_cfg = VisionConfig(name="vit_tiny_patch16_224", image_size=64, model_kwargs={"depth": 2})
    elif vision == "resnet":
        vision_cfg = VisionConfig(name="resnet18", image_size=64)
    else:
        raise ValueError(f"vision must be 'vit' or 'resnet', got {vision!r}")
    text_cfg = TextConfig(name_or_path=offline_minilm_path(), max_len=32, random_init=True,
                          config_overrides={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                            "intermediate_size": 64, "max_position_embeddings": 64})
    return ModelConfig(vision=vision_cfg, text=text_cfg, embed_dim=32, caption_decoder=caption_decoder)


def shard_captions(shard_dir: str | Path, split: str) -> dict[str, str]:
    """{sample key: caption} of the samples of `split` with a non-empty .txt member, read from the tars."""
    from shards.index import shard_urls

    captions = {}
    for shard in shard_urls(Path(shard_dir), split):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".txt"):
                    text = tar.extractfile(member).read().decode().strip()
                    if text:
                        captions[member.name[:-4]] = text
    return captions


# ----------------------------------------------------------------------------- multi-process runs


def run_ranks(fn: Callable[..., Any], world: int = 2, *args: Any) -> list[Any]:
    """Run `fn(rank, world, *args)` in `world` spawned processes and return their results, in rank order.

    Each process gets the environment of one rank of a local torch.distributed job: RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT (so `init_process_group("gloo")` and
    `pretrain.engine.init_distributed_env` join it), DS_ACCELERATOR=cpu, HF_HUB_OFFLINE=1,
    TOKENIZERS_PARALLELISM=false, and one torch thread. `fn` must be a module-level function (spawn pickles it
    by name) and its arguments and return value picklable; a return value made of tensors, numbers, strings
    and containers of them travels under torch.load(weights_only=True). An exception in any rank fails the
    call with that rank's traceback (the other ranks are terminated).
    """
    from pretrain.engine import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ranks-") as out:
        mp.spawn(_rank_main, args=(world, port, out, fn, args), nprocs=world, join=True)
        return [_load_result(Path(out) / f"rank{rank}.pt") for rank in range(world)]


def _rank_main(rank: int, world: int, port: int, out: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    result = fn(rank, world, *args)
    torch.save(result, Path(out) / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears down while another still works
        torch.distributed.destroy_process_group()
    # The result is on disk. Skip interpreter teardown: DeepSpeed/gloo background threads of a ZeRO-3 engine
    # occasionally abort at exit ("terminate called without an active exception"), after all work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _load_result(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:  # another type: written a moment ago by our own child process
        return torch.load(path, weights_only=False)
