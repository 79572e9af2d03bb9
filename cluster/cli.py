"""`retina-cluster` (also `python -m cluster`): a local Ray head, job submission, status, logs, shards, embeddings.

    retina-cluster up [--num_cpus 2]                 # Ray head + job server on 127.0.0.1 (token auth on)
    retina-cluster up --host 10.0.0.1                # a head other machines can join
    retina-cluster up --join 10.0.0.1:6379 --host 10.0.0.2   # on another machine: a worker node (same token)
    retina-cluster submit --workers 2 -- --config pretrain/configs/demo_cpu.yaml --run.dir runs/ray
    retina-cluster status [JOB_ID]                   # one job, or every job
    retina-cluster logs JOB_ID [--follow]
    retina-cluster stop JOB_ID
    retina-cluster shards --out DIR --source KIND:PATH ... [--tasks N]   # Ray-parallel `retina-shards build`
    retina-cluster embed --run RUN_DIR --shards DIR --split test --out STORE.zarr
    retina-cluster down

Client commands find the job server from --address, $RAY_API_SERVER_ADDRESS, or the cluster `up` started.
Each command's options are a dataclass below (shards.commandline: `COMMAND --help`, `--config FILE`,
`--print_config`); the argparse-era spellings (`--num-cpus 2`, `--use-gpu`, `-f`) keep working.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import local
from shards.cli import BuildArgs, build_config, build_summary
from shards.commandline import Command, parse_command, subcommand_parser
from shards.output_paths import check_output_dir

__all__ = ["COMMANDS", "main", "parser", "run", "split_train_args"]


@dataclass
class UpArgs:
    num_cpus: int | None = None
    """CPUs Ray may schedule (default: all)."""
    num_gpus: int | None = None
    """GPUs Ray may schedule (default: all)."""
    port: int = local.DEFAULT_GCS_PORT
    """GCS port."""
    dashboard_port: int = local.DEFAULT_DASHBOARD_PORT
    """Dashboard and job server port."""
    client_port: int = local.DEFAULT_CLIENT_PORT
    """Ray client server port."""
    host: str = "127.0.0.1"
    """This node's address (the head binds GCS, dashboard and job server to it); anything but 127.0.0.1 exposes
    them to the network, where the auth token protects them."""
    temp_dir: Path | None = None
    """Ray's session folder (keep it short: Ray's unix sockets live there)."""
    join: str | None = None
    """Start a worker node joining the head at this GCS address (HOST:PORT) instead of a head; needs the head's
    auth token (RAY_AUTH_TOKEN, or its token file at RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token)."""


@dataclass
class DownArgs:
    temp_dir: Path | None = None
    """The session folder given to `up`, if any."""


@dataclass
class SubmitArgs:
    address: str | None = None
    """Job server URL, e.g. http://127.0.0.1:8265."""
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
    working_dir: str = "."
    """Uploaded to the cluster (minus .venv, .git, data, runs)."""
    job_id: str | None = None
    """Submission id (default: Ray picks one)."""
    wait: bool = False
    """Follow the logs and exit 0 only if the job SUCCEEDED."""
    train_args: list[str] | None = None
    """retina-pretrain train arguments (--config FILE --run.dir DIR ...), given after `--`."""


@dataclass
class JobArgs:
    job_id: str
    """The job's submission id."""
    address: str | None = None
    """Job server URL, e.g. http://127.0.0.1:8265."""


@dataclass
class StatusArgs(JobArgs):
    job_id: str | None = None
    """The job's submission id (default: every job)."""


@dataclass
class LogsArgs(JobArgs):
    follow: bool = False
    """Stream the logs until the job ends (also -f)."""


@dataclass
class ShardsArgs(BuildArgs):
    tasks: int | None = None
    """Ray tasks (default: one per CPU, at most one per shard)."""
    address: str | None = None
    """Ray cluster (GCS host:port or 'auto'); default: start one."""


@dataclass
class EmbedArgs:
    run: Path
    """Run folder (config.yaml + checkpoints/)."""
    shards: str
    """Shard set folder, or s3://bucket/prefix."""
    out: Path
    """The zarr store folder to write."""
    checkpoint: Path | None = None
    """A checkpoint tag folder (default: latest)."""
    split: str = "test"
    """Split of the shard set to embed."""
    chunk: int = 1024
    """Samples per zarr chunk (a task writes whole chunks)."""
    batch_size: int = 64
    """Images per forward pass."""
    tasks: int | None = None
    """Ray tasks (default: one per CPU)."""
    cpus_per_task: float = 1.0
    """CPUs reserved per task."""
    gpus_per_task: float = 0.0
    """GPUs reserved per task."""
    address: str | None = None
    """Ray cluster (GCS host:port or 'auto'); default: start one."""


COMMANDS: dict[str, Command] = {
    "up": Command(UpArgs, "start a Ray head with the job server (127.0.0.1 unless --host), or --join a head"),
    "down": Command(DownArgs, "stop the cluster `up` started (only its processes)"),
    "submit": Command(SubmitArgs, "submit a training job: python -m cluster.train_job ... (arguments after --)"),
    "status": Command(StatusArgs, "a job's status (all jobs without JOB_ID)", positional=("job_id",)),
    "logs": Command(LogsArgs, "a job's logs", positional=("job_id",), aliases={"-f": "follow"}),
    "stop": Command(JobArgs, "stop a job", positional=("job_id",)),
    "shards": Command(ShardsArgs, "`retina-shards build` with Ray tasks (byte-identical output)"),
    "embed": Command(EmbedArgs, "image and text embeddings of a shard split into a zarr v3 store"),
}


def parser():
    return subcommand_parser(COMMANDS, prog="retina-cluster", description=__doc__)


def _up(args: UpArgs) -> int:
    state = local.up(num_cpus=args.num_cpus, num_gpus=args.num_gpus, port=args.port,
                     dashboard_port=args.dashboard_port, client_port=args.client_port, host=args.host,
                     temp_dir=args.temp_dir, join=args.join)
    if args.join:
        print(f"Ray worker node {state['node_ip']} joined the cluster at {state['joined']}")
        return 0
    print(f"Ray head up: GCS {state['gcs_address']}, dashboard and job server {state['dashboard_url']}")
    print(f"  export RAY_API_SERVER_ADDRESS={state['dashboard_url']} RAY_AUTH_MODE=token")
    print(f"  auth token: {'$RAY_AUTH_TOKEN' if 'RAY_AUTH_TOKEN' in os.environ else local.token_path()}")
    return 0


def _down(args: DownArgs) -> int:
    count = local.down(args.temp_dir)
    print(f"stopped {count} Ray process(es)" if count else "no Ray cluster of retina-cluster was running")
    return 0


def _submit(args: SubmitArgs) -> int:
    from cluster import jobs

    job_id = jobs.submit(list(args.train_args or []), address=args.address, working_dir=args.working_dir,
                         job_id=args.job_id, workers=args.workers, use_gpu=args.use_gpu,
                         cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                         max_failures=args.max_failures)
    print(f"submitted job {job_id}", flush=True)
    if not args.wait:
        return 0
    jobs.follow_logs(job_id, args.address)
    status = jobs.wait(job_id, args.address)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _job(command: str, args: Any) -> int:
    from cluster import jobs

    client = jobs.client(args.address)
    if command == "status" and args.job_id is None:
        for job in client.list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {job.entrypoint}")
    elif command == "status":
        info = client.get_job_info(args.job_id)
        print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    elif command == "logs" and args.follow:
        jobs.follow_logs(args.job_id, args.address)
    elif command == "logs":
        print(client.get_job_logs(args.job_id), end="")
    else:
        print(f"{args.job_id}: {'stop requested' if client.stop_job(args.job_id) else 'not running'}")
    return 0


def _shards(args: ShardsArgs) -> int:
    from cluster.shards_job import build_with_ray

    check_output_dir(args.out, "--out")
    totals = build_with_ray(build_config(args, progress=False), tasks=args.tasks, address=args.address)["totals"]
    print(build_summary(args.out, totals))
    return 0


def _embed(args: EmbedArgs) -> int:
    from cluster.embed import EmbedConfig, embed_with_ray

    check_output_dir(args.out, "--out")
    cfg = EmbedConfig(run=args.run, checkpoint=args.checkpoint, shards=args.shards, split=args.split,
                      out=args.out, chunk=args.chunk, batch_size=args.batch_size)
    summary = embed_with_ray(cfg, tasks=args.tasks, address=args.address, cpus_per_task=args.cpus_per_task,
                             gpus_per_task=args.gpus_per_task)
    print(json.dumps(summary, indent=1))
    return 0


def run(command: str, args: Any) -> int:
    if command in ("status", "logs", "stop"):
        return _job(command, args)
    handlers = {"up": _up, "down": _down, "submit": _submit, "shards": _shards, "embed": _embed}
    return handlers[command](args)


def split_train_args(argv: list[str]) -> list[str]:
    """`submit ... -- TRAIN ARGS`: everything after the first `--` becomes --train_args (a JSON list)."""
    if "--" not in argv:
        return argv
    at = argv.index("--")
    if "submit" not in argv[:at]:
        print("retina-cluster: error: only `submit` takes arguments after --", file=sys.stderr)
        raise SystemExit(2)
    return [*argv[:at], f"--train_args={json.dumps(argv[at + 1:])}"]


def main(argv: list[str] | None = None) -> int:
    argv = split_train_args(list(sys.argv[1:] if argv is None else argv))
    command, args = parse_command(parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run(command, args)
    except (RuntimeError, ValueError, FileNotFoundError, ConnectionError, TimeoutError) as exc:
        print(f"retina-cluster {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
