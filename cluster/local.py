"""A Ray cluster of our own: `retina-cluster up` / `down`, and the auth token every client needs.

`up` runs `ray start --head` bound to 127.0.0.1 (GCS, dashboard and job server; `--host ADDRESS` for a head
that other machines join), with Ray's token authentication on; `up --join HEAD:PORT --host ADDRESS` starts a
worker node of that cluster (it needs the head's token: the same RAY_AUTH_TOKEN or token file). Either writes
a small state file into the cluster's temp folder so `down` stops exactly this node's processes (those whose
command line names that folder) rather than every Ray process of the user (which is what `ray stop` does). Some Ray-internal ports (raylet, object manager) listen on all interfaces
whatever the node address; the token is what protects them.

Token: Ray reads it from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. `up`
creates the file if there is none; clients (`submit`, `status`, ..., and `ray job submit` itself) then need
RAY_AUTH_MODE=token, which `enable_token_auth()` sets for this process and its children.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["DEFAULT_DASHBOARD_PORT", "DEFAULT_GCS_PORT", "cluster_pids", "default_temp_dir", "down",
           "enable_token_auth", "ensure_token", "read_state", "up"]

log = logging.getLogger("cluster.local")

DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_CLIENT_PORT = 10001
STATE_FILE = "retina-cluster.json"


def default_temp_dir() -> Path:
    # Short on purpose: Ray's unix sockets live under it and a socket path may not exceed ~107 bytes.
    return Path(tempfile.gettempdir()) / f"rc-{os.getuid()}"


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ensure_token() -> None:
    """Make sure Ray finds a token (RAY_AUTH_TOKEN, or the token file, created here if missing, mode 0600)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = token_path()
    if path.is_file() and path.read_text(encoding="utf-8").strip():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32))


def enable_token_auth() -> None:
    """Clients of a token-protected cluster need RAY_AUTH_MODE=token (an explicit setting is respected)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if "ray" in sys.modules:  # Ray caches its config at import; refresh it so this process sees the mode
        from ray._raylet import Config

        Config.initialize("")


def _ray_executable() -> str:
    # The `ray` next to this interpreter, so the cluster runs the project's environment.
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


def read_state(temp_dir: Path | None = None) -> dict | None:
    path = Path(temp_dir or default_temp_dir()) / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def up(*, num_cpus: int | None = None, num_gpus: int | None = None, port: int = DEFAULT_GCS_PORT,
       dashboard_port: int = DEFAULT_DASHBOARD_PORT, client_port: int = DEFAULT_CLIENT_PORT,
       host: str = "127.0.0.1", temp_dir: Path | None = None, extra_env: dict[str, str] | None = None,
       join: str | None = None) -> dict:
    """Start the head node, or with `join` (the head's GCS HOST:PORT) a worker node of that cluster whose
    address is `host`; returns the state written to TEMP_DIR/retina-cluster.json."""
    temp_dir = Path(temp_dir or default_temp_dir()).resolve()
    temp_dir.mkdir(parents=True, exist_ok=True)
    if join:
        _check_address(join)
    else:
        ensure_token()
    env = {**os.environ, "RAY_AUTH_MODE": "token", **(extra_env or {})}
    # `python` in a job's entrypoint must be this environment's interpreter, whatever the caller's PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [_ray_executable(), "start", "--node-ip-address", host, "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    if join:
        cmd += ["--address", join]
    else:
        cmd += ["--head", "--port", str(port), "--dashboard-host", host, "--dashboard-port", str(dashboard_port),
                "--include-dashboard", "true", "--ray-client-server-port", str(client_port)]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ray start failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    if join:
        state = {"joined": join, "node_ip": host, "temp_dir": str(temp_dir)}
    else:
        state = {"gcs_address": f"{host}:{port}", "gcs_port": port, "dashboard_url": f"http://{host}:{dashboard_port}",
                 "temp_dir": str(temp_dir)}
        _wait_for_job_server(state["dashboard_url"])
        _wait_for_job_agent(state["gcs_address"])
    state["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    (temp_dir / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    return state


def _check_address(address: str) -> None:
    """A worker joins with the head's token: say so before Ray fails with an authentication error."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--join {address!r}: expected the head's GCS address HOST:PORT (e.g. 10.0.0.1:6379)")
    if not os.environ.get("RAY_AUTH_TOKEN") and not token_path().is_file():
        raise FileNotFoundError(f"no auth token to join {address} with: copy the head's token file to {token_path()} "
                                "(or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)")


def _wait_for_job_server(url: str, timeout: float = 60.0) -> None:
    """The dashboard (which hosts the job server) comes up a little after `ray start` returns."""
    enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception:  # connection refused / 5xx while the dashboard starts
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _wait_for_job_agent(gcs_address: str, timeout: float = 120.0) -> None:
    """The job server answers before the head's job agent has registered, and a submission in that gap fails
    with "No available agent" after 10 s (seen on a loaded 2-core machine): wait for the agent's address in
    the GCS, where the job server looks it up. Ray keeps that lookup internal, so any error here only ends the
    wait early; the submission then behaves as without it."""
    try:
        from ray._private import ray_constants
        from ray._raylet import GcsClient

        client = GcsClient(address=gcs_address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head = client.internal_kv_get(ray_constants.KV_HEAD_NODE_ID_KEY, namespace=ray_constants.KV_NAMESPACE_JOB)
            key = f"DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX:{head.decode()}".encode() if head else None
            if key and client.internal_kv_get(key, namespace=ray_constants.KV_NAMESPACE_DASHBOARD):
                return
            time.sleep(0.5)
    except Exception as err:  # a Ray without these internals: submit as before
        log.debug("not waiting for the job agent: %s", err)


def cluster_pids(temp_dir: Path) -> list[int]:
    """Processes whose command line names this cluster's temp folder (GCS, raylet, dashboard, workers) or, for
    the Ray client server (which `ray start` leaves orphaned and which names neither), its GCS port."""
    import psutil

    needle = str(temp_dir)
    state = read_state(temp_dir) or {}
    gcs = f":{state['gcs_port']}" if "gcs_port" in state else None
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real != os.getuid():
                continue
            cmdline = proc.info["cmdline"] or ()
            if any(needle in part or (gcs and part.startswith("--address=") and part.endswith(gcs))
                   for part in cmdline) and proc.pid != os.getpid():
                pids.append(proc.pid)
                # Ray workers rename themselves (ray::IDLE, ray::TrainWorker...): find them as children
                pids += [child.pid for child in proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(set(pids) - {os.getpid()})


def down(temp_dir: Path | None = None, grace: float = 10.0) -> int:
    """Stop the cluster that `up` started with this temp folder: SIGTERM, then SIGKILL after `grace` s.

    Returns how many processes were signalled."""
    import psutil

    temp_dir = Path(temp_dir or default_temp_dir()).resolve()
    pids = cluster_pids(temp_dir)
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    (temp_dir / STATE_FILE).unlink(missing_ok=True)
    return len(procs)
