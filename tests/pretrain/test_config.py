"""Config machinery: docstrings as help, YAML `base:` merging, dotted overrides, validation, CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from pretrain.config import (
    apply_overrides,
    config_help,
    field_docs,
    from_dict,
    load_config,
    load_yaml,
    parse_cli,
    save_config,
    to_dict,
)


@dataclass
class Optim:
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas.

    Two numbers."""
    warmup: int = 100


@dataclass
class Model:
    name: str = "vit_tiny"
    """timm model name."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype."""
    pretrained: Path | None = None
    """Checkpoint to start from; null for random init."""


@dataclass
class Top:
    seed: int = 0
    """Random seed."""
    model: Model = field(default_factory=Model)
    """The model."""
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=lambda: ["demo"])
    """Free-form run tags."""
    extra: Optim | None = None
    """An optional section."""


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_field_docs_parsed_from_source():
    assert field_docs(Optim) == {"lr": "Peak learning rate.", "betas": "AdamW betas.\n\nTwo numbers."}
    assert field_docs(Top)["tags"] == "Free-form run tags."
    assert "optim" not in field_docs(Top)  # no docstring, no entry


def test_defaults_and_nested_build():
    cfg = from_dict(Top, {"model": {"precision": "bf16"}, "optim": {"lr": 1, "betas": [0.8, 0.9]}})
    assert cfg.model == Model(precision="bf16")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # an int where a float is declared
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.tags == ["demo"] and cfg.extra is None
    assert from_dict(Top, {}) == Top()


def test_yaml_base_merge(tmp_path):
    write(tmp_path / "base.yaml", {"seed": 1, "model": {"name": "vit_base", "precision": "bf16"}, "tags": ["a", "b"]})
    (tmp_path / "sizes").mkdir()
    child = tmp_path / "sizes" / "large.yaml"
    write(child, {"base": "../base.yaml", "model": {"name": "vit_large"}, "tags": ["c"]})
    data = load_yaml(child)
    assert data == {"seed": 1, "model": {"name": "vit_large", "precision": "bf16"}, "tags": ["c"]}
    cfg = load_config(Top, child, [])
    assert (cfg.seed, cfg.model.name, cfg.model.precision, cfg.tags) == (1, "vit_large", "bf16", ["c"])


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ValueError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")


def test_overrides_of_every_type():
    data = apply_overrides(
        {"model": {"name": "x"}},
        [
            "--seed", "7",
            "--optim.lr=3e-4",
            "--optim.betas", "[0.5, 0.6]",
            "--model.name", "vit_base_patch16_224",
            "--model.pretrained", "ckpt/model.pt",
            "--tags=[x, y]",
            "--extra.warmup", "5",
        ],
    )  # fmt: skip
    cfg = from_dict(Top, data)
    assert cfg.seed == 7
    assert cfg.optim.lr == pytest.approx(3e-4)  # PyYAML reads '3e-4' as a string; coerced for a float field
    assert cfg.optim.betas == (0.5, 0.6)
    assert cfg.model.name == "vit_base_patch16_224"
    assert cfg.model.pretrained == Path("ckpt/model.pt")
    assert cfg.tags == ["x", "y"]
    assert cfg.extra == Optim(warmup=5)  # an override creates an Optional section
    cleared = from_dict(Top, apply_overrides(data, ["--model.pretrained", "null", "--extra=null"]))
    assert cleared.model.pretrained is None and cleared.extra is None


def test_dangling_override_is_an_error():
    with pytest.raises(ValueError, match="no value"):
        apply_overrides({}, ["--seed"])
    with pytest.raises(ValueError, match="no value"):
        apply_overrides({}, ["--seed", "--optim.lr", "1"])
    with pytest.raises(ValueError, match="override"):
        apply_overrides({}, ["seed", "1"])


def test_unknown_key_suggests_the_closest():
    suggestion = r"unknown key 'optim.lrr'; did you mean 'optim.lr'\? Valid keys under 'optim': lr, betas, warmup"
    with pytest.raises(ValueError, match=suggestion):
        from_dict(Top, {"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match=r"unknown key 'lr'; did you mean 'optim.lr'\?"):  # section left out
        load_config(Top, None, ["--lr", "1"])


def test_literal_violation():
    message = r"'model.precision' must be one of 'fp32', 'bf16', got 'bf61'; did you mean 'bf16'"
    with pytest.raises(ValueError, match=message):
        from_dict(Top, {"model": {"precision": "bf61"}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"optim": {"betas": [0.9, "x"]}}, r"optim.betas\[1\]"),
        ({"tags": "one"}, "tags"),
        ({"model": "vit"}, "model"),
        ({"model": {"pretrained": 3}}, "model.pretrained"),
    ],
)
def test_wrong_type_names_the_key(data, key):
    with pytest.raises(ValueError, match=rf"'{key}'"):
        from_dict(Top, data, where="run.yaml")


def test_wrong_type_message():
    with pytest.raises(ValueError, match=r"run.yaml: 'seed' expected int, got 'abc' \(str\)"):
        from_dict(Top, {"seed": "abc"}, where="run.yaml")


def test_round_trip(tmp_path):
    cfg = load_config(Top, None, ["--model.pretrained", "w.pt", "--optim.lr", "2.5e-4", "--extra.lr", "1"])
    save_config(cfg, tmp_path / "out" / "resolved.yaml")
    text = (tmp_path / "out" / "resolved.yaml").read_text()
    assert text.index("seed") < text.index("model") < text.index("optim")  # field order, not sorted
    assert yaml.safe_load(text) == to_dict(cfg)
    assert to_dict(cfg)["model"]["pretrained"] == "w.pt"
    assert load_config(Top, tmp_path / "out" / "resolved.yaml", []) == cfg


def test_config_help_lists_dotted_keys():
    text = config_help(Top)
    assert "--seed: int = 0\n    Random seed." in text
    assert '--model.name: str = "vit_tiny"\n    timm model name.' in text
    assert '--model.precision: {"fp32", "bf16"} = "fp32"' in text
    assert "--model.pretrained: Path | None = null" in text
    assert "--optim.betas: tuple[float, float] = [0.9, 0.98]\n    AdamW betas.\n\n    Two numbers." in text
    assert '--tags: list[str] = ["demo"]' in text
    assert "--extra.warmup: int = 100" in text


def test_parse_cli(tmp_path):
    path = write(tmp_path / "run.yaml", {"seed": 3, "optim": {"lr": 0.1}})
    cfg, got = parse_cli(Top, ["--config", str(path), "--optim.lr=0.2", "--model.name", "vit_small"])
    assert got == path
    assert (cfg.seed, cfg.optim.lr, cfg.model.name) == (3, 0.2, "vit_small")
    cfg, got = parse_cli(Top, [f"--config={path}"])
    assert got == path and cfg.optim.lr == 0.1
    assert parse_cli(Top, []) == (Top(), None)


def test_parse_cli_help_config(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Top, ["--optim.lr", "1", "--help-config"])
    assert exc.value.code == 0
    assert "--optim.lr: float = 0.001\n    Peak learning rate." in capsys.readouterr().out


def test_parse_cli_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Top, ["--optim.lrr", "1"], prog="retina-pretrain")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "retina-pretrain: error: config: unknown key 'optim.lrr'; did you mean 'optim.lr'?" in err
    with pytest.raises(ValueError, match="needs a path"):
        parse_cli(Top, ["--config"], exit_on_error=False)
