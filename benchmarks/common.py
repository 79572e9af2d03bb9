"""What every benchmark records the same way: wall time on CPU or CUDA, OOM handling, device and versions."""

from __future__ import annotations

import gc
import os
import platform
import re
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize(device)
        del result
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    result = fn()
    stop_s = time.perf_counter()
    del result  # freeing the autograd graph is not part of the forward
    return (stop_s - start_s) * 1e3


def guarded(fn: Callable[[], object], device: torch.device) -> tuple[str, object]:
    """("ok", result), or ("oom", None) with the failed attempt's memory given back."""
    try:
        return "ok", fn()
    except torch.OutOfMemoryError:
        pass  # leaving the except block drops the traceback and the tensors its frames hold
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return "oom", None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    return {"kind": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def results_dir() -> Path:
    """benchmarks/results of the repository when run from a checkout, else under the working directory."""
    root = REPO if (REPO / "pyproject.toml").is_file() else Path.cwd()
    return root / "benchmarks" / "results"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
