"""`retina-pretrain train`: defaults < --config YAML (with its `base:` chain) < dotted overrides, then train.

    retina-pretrain train --config pretrain/configs/demo_cpu.yaml --run.steps 20 --engine.lr 3e-4
    retina-pretrain train --help                      # every dotted option with its type, default and docstring
    retina-pretrain train --config ... --print_config # the resolved config as YAML (loadable with --config)
"""

from __future__ import annotations

import sys

PROG = "retina-pretrain train"


def cli_main(argv: list[str]) -> int:
    from pretrain.checkpoint import CheckpointError
    from pretrain.config import parse_cli
    from pretrain.data import DataLossError
    from pretrain.init_weights import HFImportError
    from pretrain.loop import NonFiniteWeights
    from pretrain.preflight import PreflightError, check_train_inputs
    from pretrain.run_lock import RunLocked
    from pretrain.train import TrainConfig, train

    cfg, _ = parse_cli(TrainConfig, argv, prog=PROG, description=__doc__)
    try:
        check_train_inputs(cfg)  # run folder, shard sets, objective options: before the model build
    except PreflightError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except (CheckpointError, DataLossError, HFImportError, NonFiniteWeights, RunLocked) as err:  # one line
        # naming the file, shards, broken step or lock holder
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
