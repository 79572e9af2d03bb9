"""kill -9 in the middle of a multi-process build, rerun, and get the bytes of an uninterrupted build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.tarshard import file_sha256
from tests.shards.helpers import write_flair_csv

pytestmark = pytest.mark.multiproc

N_IMAGES, SHARD_SIZE = 96, 4


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_IMAGES):
        # noise compresses badly, so every image costs real decode/resize/encode time
        Image.fromarray(rng.integers(0, 255, (384, 384, 3), dtype=np.uint8)).save(root / f"img{i:03d}.png",
                                                                                  compress_level=1)
        rows.append((f"img{i:03d}.png", "[]", "['glaucoma']" if i % 2 else "['normal']"))
    return f"flair:{write_flair_csv(root / '05_NOISE.csv', rows)}"


def build_cmd(source: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "shards", "-q", "build", "--out", str(out), "--source", source,
            "--shard-size", str(SHARD_SIZE), "--image-size", "256", "--workers", "2"]


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(out.glob("*.tar"))}


def test_resume_after_kill9_is_byte_identical(source, tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(build_cmd(source, reference), check=True, timeout=300)
    expected = shard_digests(reference)
    assert len(expected) == N_IMAGES // SHARD_SIZE

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(build_cmd(source, out), start_new_session=True)
    markers = out / ".build"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(markers.glob("*.tar.json"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the builder and its pool workers, mid-flight
    proc.wait()
    done_at_kill = len(list(markers.glob("*.tar.json")))
    assert 3 <= done_at_kill < len(expected), "the kill must land mid-build"
    assert not (out / "index.json").exists()

    rerun = subprocess.run(build_cmd(source, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert shard_digests(out) == expected
    assert not list(out.glob("*.partial"))
    verify = subprocess.run([sys.executable, "-m", "shards", "-q", "verify", str(out)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
