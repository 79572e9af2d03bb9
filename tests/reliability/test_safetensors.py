"""A truncated or foreign model.safetensors: one line naming the file and what is wrong, never a traceback
(issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pretrain.commands import import_hf
from pretrain.init_weights import HFImportError, read_weights, safetensors_problem


def _export(folder: Path) -> Path:
    """An export folder as far as import-hf reads before the weights: config.json and model.safetensors."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "retinascale"}))
    save_file({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(4, 4)}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def _cut(path: Path, keep: int) -> int:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return len(data)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: _cut(p, p.stat().st_size - 10), "truncated: its tensors need {full} bytes, the file has {now}"),
    (lambda p: _cut(p, 20), "truncated: its header needs"),
    (lambda p: _cut(p, 5), r"not a safetensors file (5 bytes; starts b'"),
    (lambda p: p.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 8), "not a safetensors file (280 bytes"),
    (lambda p: p.write_bytes((12).to_bytes(8, "little") + b'{"a": "b"}\x00\x01'), "its header is not a tensor table"),
], ids=["data-cut", "header-cut", "stub", "foreign", "bad-header"])
def test_import_hf_names_a_damaged_weights_file(tmp_path, capsys, damage, problem):
    weights = _export(tmp_path / "export")
    full = weights.stat().st_size
    damage(weights)
    problem = problem.format(full=full, now=weights.stat().st_size)
    code = import_hf.cli_main([str(tmp_path / "export"), "--out", str(tmp_path / "ft.yaml")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == f"retina-pretrain import-hf: error: {weights}: " + err.split(f"{weights}: ", 1)[1].strip()
    assert problem in err and len(err.strip().splitlines()) == 1 and "\x00" not in err, err
    assert not (tmp_path / "ft.yaml").exists()


def test_a_sound_file_passes_the_header_check(tmp_path):
    weights = _export(tmp_path / "export")
    assert safetensors_problem(weights) is None
    assert set(read_weights(weights)) == {"a", "b"}
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(HFImportError, match="truncated"):
        read_weights(weights)
