"""Job submission through Ray's job server: submit a training job, follow it, stop it.

    job_id = submit(["--config", "pretrain/configs/demo_cpu.yaml", "--run.steps", "20"], workers=2)
    wait(job_id)                      # -> "SUCCEEDED" | "FAILED" | "STOPPED"

The entrypoint is `python -m cluster.train_job [launcher flags] [pretrain config args]`, run by the cluster in a
copy of the working dir (Ray's runtime_env `working_dir`, minus `EXCLUDES`). Paths the job writes or reads
(run.dir, data.public, data.elite) are made absolute here, before the upload: relative ones would otherwise
resolve inside Ray's temporary copy. On a cluster of several machines they must be on shared storage.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from cluster.local import DEFAULT_DASHBOARD_PORT, enable_token_auth, read_state
from shards.storage import is_url

__all__ = ["EXCLUDES", "client", "entrypoint", "resolve_address", "submit", "wait"]

# Never uploaded with the working dir: environments, VCS data, build outputs, data and runs.
EXCLUDES = [".git", ".venv", "venv", ".whl", "**/__pycache__", ".pytest_cache", "demo-output", "runs", "data", "*.tar",
            "*.zarr", "*.egg-info"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PATH_KEYS = ("run.dir", "data.public", "data.elite")


def resolve_address(address: str | None = None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS (what `ray job` reads), else the cluster `up` started, else the
    default local dashboard."""
    if address:
        return address
    if os.environ.get("RAY_API_SERVER_ADDRESS"):
        return os.environ["RAY_API_SERVER_ADDRESS"]
    state = read_state()
    return state["dashboard_url"] if state else f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}"


def client(address: str | None = None) -> Any:
    enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(resolve_address(address))


def absolute_paths(train_args: list[str], base: Path) -> list[str]:
    """Append overrides that pin run.dir and the shard sets to absolute paths (later overrides win)."""
    from pretrain.config import parse_cli
    from pretrain.train import TrainConfig

    cfg, _ = parse_cli(TrainConfig, list(train_args), prog="retina-cluster submit", exit_on_error=False)
    extra = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not is_url(value) and not Path(value).is_absolute():
            extra += [f"--{key}", str((base / value).resolve())]
    return list(train_args) + extra


def entrypoint(train_args: list[str], *, workers: int = 2, use_gpu: bool = False, cpus_per_worker: float = 1,
               gpus_per_worker: float | None = None, max_failures: int = 2) -> str:
    cmd = ["python", "-m", "cluster.train_job", "--workers", str(workers), "--cpus_per_worker",
           str(cpus_per_worker), "--max_failures", str(max_failures)]
    if use_gpu:
        cmd += ["--use_gpu", "true"]
    if gpus_per_worker is not None:
        cmd += ["--gpus_per_worker", str(gpus_per_worker)]
    return shlex.join(cmd + list(train_args))


def submit(train_args: list[str], *, address: str | None = None, working_dir: str | Path = ".",
           job_id: str | None = None, env: dict[str, str] | None = None, **launcher: Any) -> str:
    """Submit `python -m cluster.train_job ...`; returns the job id."""
    working_dir = Path(working_dir).resolve()
    train_args = absolute_paths(train_args, Path.cwd())
    runtime_env = {"working_dir": str(working_dir), "excludes": EXCLUDES,
                   "env_vars": {"TOKENIZERS_PARALLELISM": "false", **(env or {})}}
    return client(address).submit_job(entrypoint=entrypoint(train_args, **launcher), runtime_env=runtime_env,
                                      submission_id=job_id)


def wait(job_id: str, address: str | None = None, timeout: float = 3600, poll: float = 2.0) -> str:
    """Block until the job ends; returns its final status."""
    jobs = client(address)
    deadline = time.monotonic() + timeout
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(poll)


def follow_logs(job_id: str, address: str | None = None) -> None:
    """Print the job's logs as they come, until it ends (`retina-cluster logs --follow`)."""
    import asyncio

    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
