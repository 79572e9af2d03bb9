"""Connecting a driver (a CLI command, a job's entrypoint) to Ray."""

from __future__ import annotations

from typing import Any

from cluster.local import enable_token_auth

__all__ = ["connect"]


def connect(address: str | None = None) -> Any:
    """`ray` connected to `address` (GCS host:port or "auto"); without one, the job's cluster when running
    inside a Ray job (RAY_ADDRESS), else a new local cluster for this process. Returns the `ray` module."""
    if address:
        enable_token_auth()  # clusters started by `retina-cluster up` require the token
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False if not address else None)
    return ray
