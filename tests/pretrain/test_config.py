"""Config machinery on jsonargparse: docstrings as help, YAML `base:` merging, dotted overrides, validation, CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from pretrain.config import field_docs, from_dict, load_config, load_yaml, parse_cli, save_config, to_dict


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
    cfg, path = parse_cli(Top, ["--config", str(child), "--seed", "5"])  # the same chain through --config
    assert (path, cfg.seed, cfg.model.precision) == (child, 5, "bf16")


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ValueError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match="cycle"):
        load_config(Top, tmp_path / "a.yaml")


def test_overrides_of_every_type():
    overrides = [
        "--seed", "7",
        "--optim.lr=3e-4",
        "--optim.betas", "[0.5, 0.6]",
        "--model.name", "vit_base_patch16_224",
        "--model.pretrained", "ckpt/model.pt",
        "--tags=[x, y]",
        "--extra.warmup", "5",
    ]  # fmt: skip
    cfg = load_config(Top, None, overrides)
    assert cfg.seed == 7
    assert cfg.optim.lr == pytest.approx(3e-4)  # PyYAML reads '3e-4' as a string; still a float field's value
    assert cfg.optim.betas == (0.5, 0.6)
    assert cfg.model.name == "vit_base_patch16_224"
    assert cfg.model.pretrained == Path("ckpt/model.pt")
    assert cfg.tags == ["x", "y"]
    assert cfg.extra == Optim(warmup=5)  # an override creates an Optional section
    cleared = load_config(Top, None, [*overrides, "--model.pretrained", "null", "--extra=null"])
    assert cleared.model.pretrained is None and cleared.extra is None
    assert load_config(Top, None, ["--model.name", "2024"]).model.name == "2024"  # a number is a fine name


def test_dangling_override_is_an_error():
    with pytest.raises(ValueError, match="seed"):
        load_config(Top, None, ["--seed"])
    with pytest.raises(ValueError, match="unrecognized"):
        load_config(Top, None, ["seed", "1"])


def test_unknown_key_suggests_the_closest(tmp_path):
    suggestion = r"unknown key 'optim.lrr'; did you mean 'optim.lr'\? Valid keys under 'optim': lr, betas, warmup"
    with pytest.raises(ValueError, match=suggestion):
        from_dict(Top, {"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match=rf"{tmp_path / 'run.yaml'}: unknown key 'optim.lrr'; did you mean"):
        load_config(Top, write(tmp_path / "run.yaml", {"optim": {"lrr": 1}}))
    with pytest.raises(ValueError, match=r"--optim.lrr: did you mean --optim.lr\?"):
        load_config(Top, None, ["--optim.lrr", "1"])
    with pytest.raises(ValueError, match=r"--lr: did you mean --optim.lr\?"):  # section left out
        load_config(Top, None, ["--lr", "1"])
    with pytest.raises(ValueError, match=r"unknown key 'extra.warmupp'; did you mean 'extra.warmup'"):
        from_dict(Top, {"extra": {"warmupp": 1}})  # inside an Optional section too


def test_literal_violation():
    with pytest.raises(ValueError, match=r"(?s)model.precision.*bf61"):
        from_dict(Top, {"model": {"precision": "bf61"}})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"optim": {"betas": [0.9, "x"]}}, "optim.betas"),
        ({"tags": "one"}, "tags"),
        ({"model": "vit"}, "model"),
        ({"model": {"pretrained": 3}}, "model.pretrained"),
        ({"model": {"name": True}}, "model.name"),
    ],
)
def test_wrong_type_names_the_key_and_the_file(data, key):
    with pytest.raises(ValueError, match=rf'(?s)^run.yaml: .*"{key}"'):
        from_dict(Top, data, where="run.yaml")


def test_wrong_type_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "run.yaml", {"optim": {"lr": "fast"}})
    with pytest.raises(ValueError, match=rf'(?s){path}: .*"optim.lr".*fast'):
        load_config(Top, path)


def test_round_trip(tmp_path):
    cfg = load_config(Top, None, ["--model.pretrained", "w.pt", "--optim.lr", "2.5e-4", "--extra.lr", "1"])
    save_config(cfg, tmp_path / "out" / "resolved.yaml")
    text = (tmp_path / "out" / "resolved.yaml").read_text()
    assert text.index("seed") < text.index("model") < text.index("optim")  # field order, not sorted
    assert yaml.safe_load(text) == to_dict(cfg)
    assert to_dict(cfg)["model"]["pretrained"] == "w.pt"
    assert load_config(Top, tmp_path / "out" / "resolved.yaml", []) == cfg
    assert from_dict(Top, to_dict(cfg)) == cfg


def test_parse_cli(tmp_path):
    path = write(tmp_path / "run.yaml", {"seed": 3, "optim": {"lr": 0.1}})
    cfg, got = parse_cli(Top, ["--config", str(path), "--optim.lr=0.2", "--model.name", "vit_small"])
    assert got == path
    assert (cfg.seed, cfg.optim.lr, cfg.model.name) == (3, 0.2, "vit_small")
    cfg, got = parse_cli(Top, [f"--config={path}"])
    assert got == path and cfg.optim.lr == 0.1
    assert parse_cli(Top, []) == (Top(), None)
    cfg, _ = parse_cli(Top, ["--optim.lr", "0.5", "--config", str(path)])  # a later file wins over earlier flags
    assert cfg.optim.lr == 0.1


def test_help_lists_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Top, ["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, doc in (("--seed", "Random seed."), ("--model.name", "timm model name."),
                        ("--model.precision {fp32,bf16}", "Compute dtype."), ("--optim.lr", "Peak learning rate."),
                        ("--optim.warmup", "default: 100"), ("--extra", "An optional section.")):
        assert option in text and doc in text


def test_print_config_loads_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Top, ["--optim.lr", "0.25", "--extra.warmup", "3", "--print_config"])
    assert exc.value.code == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    assert load_config(Top, path) == load_config(Top, None, ["--optim.lr", "0.25", "--extra.warmup", "3"])


def test_help_config_points_to_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Top, ["--optim.lr", "1", "--help-config"], prog="retina-pretrain train")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "retina-pretrain train: error: --help-config is gone" in err and "--help" in err and "--print_config" in err


def test_parse_cli_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Top, ["--optim.lrr", "1"], prog="retina-pretrain")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "retina-pretrain: error: unrecognized arguments: --optim.lrr 1" in err and "did you mean --optim.lr?" in err
    with pytest.raises(SystemExit):
        parse_cli(Top, ["--config", str(tmp_path / "missing.yaml")], prog="retina-pretrain")
    assert "missing.yaml" in capsys.readouterr().err
    with pytest.raises(ValueError, match="config"):
        parse_cli(Top, ["--config"], exit_on_error=False)
