"""Peak memory of one contrastive forward + backward beyond its inputs, for a (provider, B, D) point.

CUDA: the allocator's peak in-process. CPU: the rise of VmHWM over VmRSS in a fresh process per point,
because VmHWM only ever grows within a process; the probes fork from a multiprocessing forkserver that
imported torch (and open_clip) once, so a fresh process costs no imports.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import re
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from pathlib import Path

import torch

from benchmarks.common import guarded
from benchmarks.contrastive_providers import make_inputs, make_loss

MIB = 2**20


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated - memory_allocated after the inputs, one forward + backward"
    return ("fresh process per (provider, B, D), forked from a forkserver that only imported the modules: "
            "small warm-up pass, inputs allocated, free heap trimmed, VmHWM reset via /proc/self/clear_refs, "
            "one forward + backward; peak = VmHWM - VmRSS before")


def cuda_peak_bytes(provider: str, batch: int, dim: int, dtype: str, chunk_size: int, device: torch.device) -> int:
    loss = make_loss(provider, chunk_size)
    inputs = make_inputs(batch, dim, dtype, device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    loss(*inputs).backward()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; the CPU memory probe needs Linux")
    return int(match.group(1))


def reset_high_water_mark() -> bool:
    """Linux >= 4.0 resets VmHWM to the current RSS on "5" (drops the import-time peak)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS, so the measured run cannot silently reuse resident ones."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def probe_here(provider: str, batch: int, dim: int, dtype: str, chunk_size: int) -> dict:
    """The body of the CPU memory probe; meant to run in a fresh process (see `cpu_peak`)."""
    cpu = torch.device("cpu")
    loss = make_loss(provider, chunk_size)
    # A small pass first pages in the library code and starts the thread pool, which are not the loss's memory.
    loss(*make_inputs(min(batch, 64), dim, dtype, cpu)).backward()
    inputs = make_inputs(batch, dim, dtype, cpu)
    gc.collect()
    release_free_heap()
    hwm_reset = reset_high_water_mark()
    before = status_kib("VmRSS")
    loss(*inputs).backward()
    peak = status_kib("VmHWM")
    return {"peak_bytes": (peak - before) * 1024, "rss_before_bytes": before * 1024, "hwm_reset": hwm_reset}


def _probe_child(conn: Connection, point: tuple[str, int, int], dtype: str, chunk_size: int) -> None:
    conn.send(probe_here(*point, dtype, chunk_size))
    conn.close()


def probe_context(providers: list[str]) -> BaseContext:
    """Probes fork from a server that imported torch (and open_clip) once. The server only imports, so it
    has no OpenMP thread pool for a fork to break."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.memory"] + (["open_clip"] if "open_clip" in providers else []))
    return ctx


def cpu_peak(ctx: BaseContext, point: tuple[str, int, int], dtype: str, chunk_size: int) -> dict:
    """Peak of one forward + backward in a fresh process: {"status": "ok", "peak_mib": ...} or a failure."""
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe_child, args=(send, point, dtype, chunk_size), daemon=True)
    proc.start()
    send.close()  # our copy: recv() then sees EOF if the child dies
    try:
        probe = receive.recv()
    except EOFError:
        probe = None
    proc.join()
    record = dict(zip(("provider", "batch", "dim"), point))
    if probe is None:
        killed = proc.exitcode is not None and proc.exitcode < 0  # typically the kernel's OOM killer
        return record | {"status": "oom" if killed else "failed", "detail": f"probe exited with {proc.exitcode}"}
    return record | {"status": "ok", "peak_mib": probe["peak_bytes"] / MIB, "hwm_reset": probe["hwm_reset"]}


def cpu_peaks(points: list[tuple[str, int, int]], dtype: str, chunk_size: int, jobs: int = 2) -> list[dict]:
    """Probe several (provider, B, D) at once: RSS is per process, so parallel probes do not disturb each other."""
    ctx = probe_context(sorted({p for p, _, _ in points}))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda point: cpu_peak(ctx, point, dtype, chunk_size), points))


def measure_memory(points: list[tuple[str, int, int]], device: torch.device, dtype: str, chunk_size: int,
                   jobs: int) -> list[dict]:
    if device.type != "cuda":
        return cpu_peaks(points, dtype, chunk_size, jobs)
    records = []
    for provider, batch, dim in points:
        status, peak = guarded(lambda: cuda_peak_bytes(provider, batch, dim, dtype, chunk_size, device), device)
        record = {"provider": provider, "batch": batch, "dim": dim, "status": status}
        records.append(record | ({"peak_mib": peak / MIB} if status == "ok" else {}))
    return records
