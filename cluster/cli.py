"""`retina-cluster` (also `python -m cluster`): a local Ray head, job submission, status, logs, shards, embeddings.

    retina-cluster up [--num-cpus 2]                 # Ray head + job server on 127.0.0.1 (token auth on)
    retina-cluster submit --workers 2 -- --config pretrain/configs/demo_cpu.yaml --run.dir runs/ray
    retina-cluster status [JOB_ID]                   # one job, or every job
    retina-cluster logs JOB_ID [--follow]
    retina-cluster stop JOB_ID
    retina-cluster shards --out DIR --source KIND:PATH ... [--tasks N]   # Ray-parallel `retina-shards build`
    retina-cluster embed --run RUN_DIR --shards DIR --split test --out STORE.zarr
    retina-cluster down

Client commands find the job server from --address, $RAY_API_SERVER_ADDRESS, or the cluster `up` started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cluster import local


def _add_up_down(sub) -> None:
    p = sub.add_parser("up", help="start a one-machine Ray head with the job server, bound to 127.0.0.1")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may schedule (default: all)")
    p.add_argument("--num-gpus", type=int, default=None)
    p.add_argument("--port", type=int, default=local.DEFAULT_GCS_PORT, help="GCS port")
    p.add_argument("--dashboard-port", type=int, default=local.DEFAULT_DASHBOARD_PORT,
                   help="dashboard and job server port")
    p.add_argument("--client-port", type=int, default=local.DEFAULT_CLIENT_PORT, help="Ray client server port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but 127.0.0.1 exposes the job server to the network")
    p.add_argument("--temp-dir", type=Path, default=None, help="Ray's session folder (keep it short)")
    p = sub.add_parser("down", help="stop the cluster `up` started (only its processes)")
    p.add_argument("--temp-dir", type=Path, default=None)


def _add_jobs(sub) -> None:
    p = sub.add_parser("submit", help="submit a training job: python -m cluster.train_job ... (args after --)")
    p.add_argument("--address", default=None, help="job server URL, e.g. http://127.0.0.1:8265")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--working-dir", default=".", help="uploaded to the cluster (minus .venv, .git, data, runs)")
    p.add_argument("--job-id", default=None)
    p.add_argument("--wait", action="store_true", help="follow the logs and exit 0 only if it SUCCEEDED")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then retina-pretrain train arguments")
    for name, text in (("status", "a job's status (all jobs without JOB_ID)"), ("logs", "a job's logs"),
                       ("stop", "stop a job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id", nargs="?" if name == "status" else None)
        p.add_argument("--address", default=None)
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")


class _Renamed:
    """Lets shards.cli declare its `build` flags under another command name, so both CLIs stay in step."""

    def __init__(self, sub, name: str, help: str):
        self.sub, self.name, self.help = sub, name, help

    def add_parser(self, _name: str, **kwargs):
        return self.sub.add_parser(self.name, **{**kwargs, "help": self.help})


def _add_work(sub) -> None:
    from shards.cli import _add_build

    _add_build(_Renamed(sub, "shards", "`retina-shards build` with Ray tasks (byte-identical output)"))
    p = sub.choices["shards"]
    p.add_argument("--tasks", type=int, default=None, help="Ray tasks (default: one per CPU, at most one per shard)")
    p.add_argument("--address", default=None, help="Ray cluster (GCS host:port or 'auto'); default: start one")
    p = sub.add_parser("embed", help="image and text embeddings of a shard split into a zarr v3 store")
    p.add_argument("--run", type=Path, required=True, help="run folder (config.yaml + checkpoints/)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint tag folder (default: latest)")
    p.add_argument("--shards", type=Path, required=True, help="shard set folder")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True, help="the zarr store folder to write")
    p.add_argument("--chunk", type=int, default=1024, help="samples per zarr chunk (a task writes whole chunks)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tasks", type=int, default=None, help="Ray tasks (default: one per CPU)")
    p.add_argument("--cpus-per-task", type=float, default=1.0)
    p.add_argument("--gpus-per-task", type=float, default=0.0)
    p.add_argument("--address", default=None, help="Ray cluster (GCS host:port or 'auto'); default: start one")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retina-cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _add_up_down(sub)
    _add_jobs(sub)
    _add_work(sub)
    return p


def run(args: argparse.Namespace) -> int:
    if args.command == "up":
        state = local.up(num_cpus=args.num_cpus, num_gpus=args.num_gpus, port=args.port,
                         dashboard_port=args.dashboard_port, client_port=args.client_port, host=args.host,
                         temp_dir=args.temp_dir)
        print(f"Ray head up: GCS {state['gcs_address']}, dashboard and job server {state['dashboard_url']}")
        print(f"  export RAY_API_SERVER_ADDRESS={state['dashboard_url']} RAY_AUTH_MODE=token")
        print(f"  auth token: {'$RAY_AUTH_TOKEN' if 'RAY_AUTH_TOKEN' in os.environ else local.token_path()}")
        return 0
    if args.command == "down":
        count = local.down(args.temp_dir)
        print(f"stopped {count} Ray process(es)" if count else "no Ray cluster of retina-cluster was running")
        return 0
    if args.command == "submit":
        from cluster import jobs

        train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        job_id = jobs.submit(train_args, address=args.address, working_dir=args.working_dir, job_id=args.job_id,
                             workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, max_failures=args.max_failures)
        print(f"submitted job {job_id}", flush=True)
        if not args.wait:
            return 0
        jobs.follow_logs(job_id, args.address)
        status = jobs.wait(job_id, args.address)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    if args.command in ("status", "logs", "stop"):
        from cluster import jobs

        client = jobs.client(args.address)
        if args.command == "status" and args.job_id is None:
            for job in client.list_jobs():
                print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {job.entrypoint}")
        elif args.command == "status":
            info = client.get_job_info(args.job_id)
            print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
        elif args.command == "logs" and args.follow:
            jobs.follow_logs(args.job_id, args.address)
        elif args.command == "logs":
            print(client.get_job_logs(args.job_id), end="")
        else:
            print(f"{args.job_id}: {'stop requested' if client.stop_job(args.job_id) else 'not running'}")
        return 0
    if args.command == "shards":
        from cluster.shards_job import build_with_ray
        from shards.build import BuildConfig

        cfg = BuildConfig(out=args.out, sources=args.source, shard_size=args.shard_size, image_size=args.image_size,
                          image_format=args.image_format, max_pixels=args.max_pixels, split=args.split,
                          order=args.order, seed=args.seed, workers=args.workers, progress=False)
        t = build_with_ray(cfg, tasks=args.tasks, address=args.address)["totals"]
        print(f"{args.out}: rows read {t['rows_read']} = written {t['written']} + rejected {t['rejected']} "
              f"+ duplicates {t['duplicates']}")
        return 0
    if args.command == "embed":
        from cluster.embed import EmbedConfig, embed_with_ray

        cfg = EmbedConfig(run=args.run, checkpoint=args.checkpoint, shards=args.shards, split=args.split,
                          out=args.out, chunk=args.chunk, batch_size=args.batch_size)
        summary = embed_with_ray(cfg, tasks=args.tasks, address=args.address, cpus_per_task=args.cpus_per_task,
                                 gpus_per_task=args.gpus_per_task)
        print(json.dumps(summary, indent=1))
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run(args)
    except (RuntimeError, ValueError, FileNotFoundError, ConnectionError, TimeoutError) as exc:
        print(f"retina-cluster {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
