"""Console scripts are declared, and each CLI lists its commands."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

SCRIPTS = {"retina-shards": "shards.cli:main", "retina-pretrain": "pretrain.cli:main",
           "retina-cluster": "cluster.cli:main", "retina-bench": "benchmarks.cli:main"}


def test_console_scripts_are_declared():
    declared = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name in SCRIPTS}
    if not declared:
        pytest.skip("retinascale is not installed in this environment (run through `make test`)")
    assert declared == SCRIPTS


def test_shards_cli_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "shards", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("synth", "render", "build", "verify", "inspect", "stats"):
        assert command in result.stdout


def test_pyproject_declares_the_scripts_and_each_target_imports():
    """Without an install: the declarations in pyproject.toml, and every `module:function` they name."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts == SCRIPTS
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_bench_cli_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("contrastive", "attention", "resources"):
        assert command in result.stdout
