"""benchmarks/gpu_session.sh, the one script a GPU session runs: it parses, its step limits fit the 8 minutes,
and every config and script it names exists (a typo there would only show on the GPU machine)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SESSION = REPO / "benchmarks" / "gpu_session.sh"
STEP = re.compile(r"^step (\S+) (\d+) ", re.MULTILINE)


@pytest.mark.parametrize("script", ["gpu_session.sh", "gpu_wheels.sh"])
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_step_limits_fit_eight_minutes_with_room_for_set_up():
    steps = dict(STEP.findall(SESSION.read_text()))
    assert {"gpu-tests", "contrastive", "tile-sweep", "attention", "train", "e2e-shards", "e2e-vit",
            "e2e-rn50"} <= steps.keys()
    total = sum(int(limit) for limit in steps.values())
    assert total < 480
    assert total <= 450  # 30 s left for the wheel install and the header, as the script's comment says
    assert f"add up to {total} s" in SESSION.read_text()


def test_named_configs_and_scripts_exist_and_configs_load():
    from pretrain.config import load_config
    from pretrain.train import TrainConfig

    text = SESSION.read_text()
    configs = re.findall(r"--config (pretrain/configs/\S+\.yaml)", text)
    scripts = re.findall(r"(?<![/\w])benchmarks/\w+\.py", text)
    assert len(configs) == 2 and scripts
    for path in [*configs, *scripts]:
        assert (REPO / path).is_file(), path
    for path in configs:
        cfg = load_config(TrainConfig, REPO / path)
        assert cfg.engine.precision == "bf16" and cfg.model.text.random_init
        assert cfg.run.steps >= 100 and cfg.run.steps // cfg.run.log_every >= 5  # enough intervals for a median


def test_only_wheels_of_absent_distributions_are_installed():
    # names only: missing_wheels.py reads the distribution from the file name and asks this interpreter
    wheels = ["x/pytest-1.0-py3-none-any.whl", "x/scikit_learn-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
              "x/no_such_distribution_here-1.0-py3-none-any.whl"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "missing_wheels.py"), *wheels],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["x/no_such_distribution_here-1.0-py3-none-any.whl"]
    assert "kept pytest" in proc.stderr and "kept scikit_learn" in proc.stderr
