"""The Ray Train launcher: `python -m cluster.train_job [launcher flags] [pretrain config args]`.

    python -m cluster.train_job --workers 2 --max_failures 2 --config pretrain/configs/demo_cpu.yaml \
        --run.dir /shared/runs/x --run.steps 100
    python -m cluster.train_job --help     # the launcher options, then every option of retina-pretrain train

A `TorchTrainer` starts `--workers` Ray workers; Ray Train creates the torch process group (gloo on CPU, nccl
on GPU) and sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR, so `pretrain.engine.init_distributed_env` finds it
initialised and DeepSpeed joins it. Every worker runs the ordinary `pretrain.train.train`; its data streams are
split by the torch rank, which is Ray's world rank (checked below).

Storage and fault tolerance: without `run.remote`, `run.dir` is the Ray Train run folder (storage_path = its
parent, name = its name), so DeepSpeed's checkpoints under RUN_DIR/checkpoints are on the run's storage and are
reported to Ray in place (no copy); on several machines it must be storage every node mounts. With `run.remote`
(object storage, e.g. s3://bucket/runs/x) Ray Train's storage_path is that prefix (its run state goes to
REMOTE/ray-train/), every complete checkpoint is uploaded by the training itself (pretrain.remote_checkpoint;
from each machine's own folder when run.dir is not shared: pretrain.spread_checkpoint) and only metrics are
reported to Ray. With `FailureConfig(max_failures)`, when a worker dies Ray restarts the whole worker group
and every worker calls `train` again, which resumes (run.resume auto) from RUN_DIR/checkpoints/latest or, with
run.remote, the newest COMPLETE remote checkpoint (`latest` is written only after every rank's files are).

Data policy on resume: model, optimizer, scheduler and RNG states come back exactly, and the step count
continues from the checkpoint's step. The data streams are not replayed: they are reseeded by the resume step
(pretrain.data.make_loader(step=...)), so the steps after the checkpoint see fresh batches drawn from the same
shard sets (sampling with replacement), not the batches the lost steps saw, and never step 0's batches again.
Steps done after the last checkpoint and before the failure are redone (with those fresh batches).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.train import TrainConfig  # imports no DeepSpeed: train_worker still picks its accelerator first
from shards.storage import is_url

__all__ = ["TrainJobArgs", "main", "parse_args", "ray_storage", "train_worker"]


@dataclass
class TrainJobArgs(TrainConfig):
    """A TrainConfig plus the launcher's own options: one parser, one --help, one --config file."""

    workers: int = 2
    """Ray Train workers (one trainer rank each)."""
    use_gpu: bool = False
    """One GPU per worker, nccl."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    gpus_per_worker: float | None = None
    """GPUs per worker with --use_gpu (default 1)."""
    max_failures: int = 2
    """Worker-group restarts (each resumes from the latest checkpoint); -1 for unlimited."""


def parse_args(argv: list[str]) -> tuple[TrainJobArgs, TrainConfig]:
    """(launcher and training options, the TrainConfig part); --help, --config FILE and dotted overrides as in
    retina-pretrain train, the launcher flags also with dashes (--max-failures)."""
    from shards.commandline import Command, command_parser, parse_command

    prog = "python -m cluster.train_job"
    parser = command_parser(Command(TrainJobArgs), prog=prog, description="Run retina-pretrain training on Ray "
                            "Train workers: the launcher options, then every option of retina-pretrain train.")
    _, args = parse_command(parser, argv, prog=prog)
    return args, TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def train_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker (also again after each restart)."""
    if not config["use_gpu"]:
        # DeepSpeed picks its accelerator when first imported; say CPU before anything imports it.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint, CheckpointUploadMode

    from pretrain.config import from_dict
    from pretrain.train import train

    cfg = from_dict(TrainConfig, config["train_config"])
    ctx = ray.train.get_context()
    # pretrain.data splits shards by the torch rank; it must be Ray's world rank.
    assert dist.is_initialized() and dist.get_rank() == ctx.get_world_rank(), "torch rank != Ray world rank"
    assert dist.get_world_size() == ctx.get_world_size()
    if ray.train.get_checkpoint() is not None:
        cfg.run.resume = "auto"  # a restart after a failure always continues from the newest checkpoint

    def report(step: int, path: Path) -> None:
        # Called on every rank after a complete checkpoint; the files are already on the run's storage, or
        # with run.remote on object storage, where Ray's storage (another filesystem) cannot point at them.
        if cfg.run.remote:
            ray.train.report({"step": step})
            return
        ray.train.report({"step": step}, checkpoint=Checkpoint(str(path)),
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    train(cfg, on_checkpoint=report)


def ray_storage(run_dir: Path, remote: str | None) -> dict[str, str]:
    """RunConfig's name and storage_path: the run folder, or with run.remote Ray's part of that prefix (Ray
    reaches it through pyarrow, with the same AWS variables and AWS_ENDPOINT_URL as s3fs)."""
    if remote:
        return {"name": "ray-train", "storage_path": str(remote).rstrip("/")}
    return {"name": run_dir.name, "storage_path": str(run_dir.parent)}


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(list(sys.argv[1:] if argv is None else argv))
    from pretrain.config import to_dict

    # Resolved here, in the job's folder: Ray Train workers run in another working directory.
    run_dir = Path(cfg.run.dir).resolve()
    cfg.run.dir = str(run_dir)
    for name in ("public", "elite"):
        if getattr(cfg.data, name) and not is_url(getattr(cfg.data, name)):  # s3://... stays as it is
            setattr(cfg.data, name, str(Path(getattr(cfg.data, name)).resolve()))

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(ignore_reinit_error=True)  # inside a job: the job's cluster; standalone: a new local one
    resources: dict[str, float] = {"CPU": args.cpus_per_worker}
    if args.use_gpu:
        resources["GPU"] = args.gpus_per_worker or 1.0
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train_config": to_dict(cfg), "use_gpu": args.use_gpu},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(**ray_storage(run_dir, cfg.run.remote),
                             failure_config=FailureConfig(max_failures=args.max_failures)),
    )
    result = trainer.fit()  # raises once the failures exceed max_failures
    checkpoint = result.checkpoint.path if result.checkpoint else None
    step = (result.metrics or {}).get("step")  # with run.remote Ray holds no checkpoint (and so no metrics)
    where = checkpoint or (f"{cfg.run.remote}/checkpoints" if cfg.run.remote else None)
    print(f"training finished: step {step} | checkpoint {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
