"""`retina-pretrain text-pretrain`: defaults < --config YAML < dotted overrides, then KeepFIT V2 stage 1."""

from __future__ import annotations

import sys

PROG = "retina-pretrain text-pretrain"


def cli_main(argv: list[str]) -> int:
    import torch

    from pretrain import text_pretrain as stage1
    from pretrain.config import parse_cli
    from pretrain.preflight import check_remote
    from pretrain.run_lock import RunLocked
    from shards.output_paths import check_output_dir

    cfg, _ = parse_cli(stage1.TextPretrainConfig, argv, prog=PROG, description=stage1.__doc__)
    try:
        check_output_dir(cfg.run.dir, "--run.dir")
        if cfg.run.remote:
            check_remote(cfg.run.remote)  # as `train`: a missing bucket before the text tower is built
        if cfg.out is not None:
            check_output_dir(cfg.out, "--out")
        stage1.text_pretrain(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # FileExistsError: an OUT it must not replace
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except RunLocked as err:  # another training holds the run folder: as `train`, exit 1
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
