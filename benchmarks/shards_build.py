"""Shard build and read throughput against the naive ways, on the same synthetic input.

Build: `retina-shards build` (process pool, JPEG draft decoding, deterministic tars), with all workers
and with one, against a naive single-process loop (PIL + webdataset.ShardWriter) doing the same
decode, resize and JPEG encode. The build also hashes and dedups every file; the loop does not.
Read: the shards through webdataset + DataLoader against a FLAIR-style per-file Dataset over the
original images (open, decode, resize to the canvas, tensor) at the same number of DataLoader workers.

Writes benchmarks/results/shards_build-<device>.json with medians, ratios, device and versions.
Usage: python benchmarks/shards_build.py [--images 400] [--source-size 768] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import PIL
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import cpu_name
from shards.build import BuildConfig, build
from shards.images import fit_square
from shards.readers.fields import parse_list
from shards.synth import synthesize

CANVAS = 224


def naive_build(frames: list[Path], image_root: Path, out: Path) -> int:
    """What a hand-written script does: one process, one file at a time, webdataset's ShardWriter."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with wds.ShardWriter(str(out / "naive-%06d.tar"), maxcount=200, verbose=0) as sink:
        for frame in frames:
            with open(frame, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    img = Image.open(image_root / row["image"]).convert("RGB")
                    buf = io.BytesIO()
                    fit_square(img, CANVAS).save(buf, format="JPEG", quality=95)
                    meta = {"categories": list(parse_list(row["categories"], column="categories"))}
                    sink.write({"__key__": f"s{written:08d}", "jpg": buf.getvalue(), "json": meta, "txt": ""})
                    written += 1
    return written


class PerFileDataset(Dataset):
    """FLAIR-style loading: a dataframe of paths, each image opened, decoded and resized at load time."""

    def __init__(self, frames: list[Path], image_root: Path):
        self.rows = []
        for frame in frames:
            with open(frame, newline="", encoding="utf-8") as fh:
                self.rows.extend(csv.DictReader(fh))
        self.root = image_root

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = Image.open(self.root / self.rows[i]["image"]).convert("RGB")
        return to_tensor(fit_square(img, CANVAS))


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_sample(sample: dict) -> torch.Tensor:
    data = sample.get("jpg") or sample.get("png")
    return to_tensor(Image.open(io.BytesIO(data)))


def shard_loader(urls: list[str], workers: int) -> DataLoader:
    dataset = wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker).map(decode_sample)
    return DataLoader(dataset, batch_size=32, num_workers=workers)


def consume(loader: DataLoader) -> int:
    return sum(batch.shape[0] for batch in loader)


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def record(args: argparse.Namespace, build_ours: list[float], build_ours_1: list[float], build_naive: list[float],
           read_shards: list[float], read_files: list[float]) -> dict:
    """The results JSON: every run, the medians and the ratios against the naive ways."""
    med = statistics.median
    return {
        "benchmark": "shards_build",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": {"kind": "cpu", "name": cpu_name(), "cores": os.cpu_count()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "webdataset": getattr(wds, "__version__", "unknown"), "pillow": PIL.__version__},
        "params": {"images": args.images, "source_size": args.source_size, "canvas": CANVAS,
                   "repeats": args.repeats, "workers": args.workers},
        # workers=1 separates the per-image gain (JPEG draft decoding) from the process-pool gain
        "build_images_per_s": {"retina_shards": {"median": med(build_ours), "runs": build_ours},
                               "retina_shards_1_worker": {"median": med(build_ours_1), "runs": build_ours_1},
                               "naive_loop": {"median": med(build_naive), "runs": build_naive},
                               "ratio": med(build_ours) / med(build_naive),
                               "ratio_1_worker": med(build_ours_1) / med(build_naive)},
        "read_samples_per_s": {"shards_webdataset": {"median": med(read_shards), "runs": read_shards},
                               "per_file_dataset": {"median": med(read_files), "runs": read_files},
                               "ratio": med(read_shards) / med(read_files)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="public synthetic images")
    parser.add_argument("--source-size", type=int, default=768, help="side of the original images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="shards-bench-"))
    try:
        synthesize(work / "data", public=args.images, elite=0, eval=0, seed=0,
                   image_size=args.source_size, progress=False)
        frames = sorted((work / "data" / "dataframes" / "pretraining").glob("9*_SYNTH_*.csv"))
        image_root = work / "data" / "images"
        sources = [f"flair:{f}:{image_root}" for f in frames]

        def ours(run: int, workers: int) -> int:
            cfg = BuildConfig(out=work / f"ours-{workers}-{run}", sources=sources, shard_size=200,
                              image_size=CANVAS, workers=workers, progress=False)
            return build(cfg)["totals"]["written"]

        build_ours, build_ours_1, build_naive = [], [], []
        for run in range(args.repeats):
            seconds, count = timed(lambda: ours(run, args.workers))
            build_ours.append(count / seconds)
            seconds, count = timed(lambda: ours(run, 1))
            build_ours_1.append(count / seconds)
            seconds, count = timed(lambda: naive_build(frames, image_root, work / f"naive-{run}"))
            build_naive.append(count / seconds)

        urls = sorted(str(p) for p in (work / f"ours-{args.workers}-0").glob("*.tar"))
        per_file = PerFileDataset(frames, image_root)
        read_shards, read_files = [], []
        for _ in range(args.repeats):
            seconds, count = timed(lambda: consume(shard_loader(urls, args.workers)))
            read_shards.append(count / seconds)
            seconds, count = timed(lambda: consume(DataLoader(per_file, batch_size=32, num_workers=args.workers)))
            read_files.append(count / seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = record(args, build_ours, build_ours_1, build_naive, read_shards, read_files)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "shards_build-cpu.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    b, r = result["build_images_per_s"], result["read_samples_per_s"]
    print(f"build: retina-shards {b['retina_shards']['median']:.1f} img/s ({args.workers} workers), "
          f"{b['retina_shards_1_worker']['median']:.1f} img/s (1 worker) vs naive loop "
          f"{b['naive_loop']['median']:.1f} img/s -> {b['ratio']:.2f}x ({b['ratio_1_worker']:.2f}x with 1 worker)")
    print(f"read:  shards {r['shards_webdataset']['median']:.1f} samples/s vs per-file "
          f"{r['per_file_dataset']['median']:.1f} samples/s -> {r['ratio']:.2f}x")
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
