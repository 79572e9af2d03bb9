"""Typed configs: nested dataclasses, YAML files with `base:` inheritance, dotted CLI overrides, on jsonargparse.

A config section is a plain dataclass whose fields carry a docstring right below them; that docstring is
the schema's help text (`--help`), in the style of litgpt/torchtitan:

    @dataclass
    class Optim:
        lr: float = 1e-3
        \"\"\"Peak learning rate.\"\"\"

Resolution order, later wins: dataclass defaults < YAML file (after merging its `base:` chain) < CLI
overrides (`--optim.lr 3e-4` / `--optim.lr=3e-4`, values parsed as YAML: `3e-4`, `true`, `null`, `[224,224]`).
jsonargparse builds the parser from the dataclass (shards.commandline) and validates every value, so a typo
or a wrong type fails before any work starts, naming the dotted key (`optim.lr`) and the file; an unknown key
also gets the closest valid one. `--print_config` prints the resolved config as YAML that loads back.

Config dataclasses must live at module level: their annotations are resolved with `typing.get_type_hints`.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shards.atomic import atomic_write
from shards.commandline import (Command, check_keys, command_parser, explain_error, field_docs, instantiate,
                                load_yaml, parse_command)

T = TypeVar("T")

__all__ = ["config_parser", "field_docs", "from_dict", "load_config", "load_yaml", "parse_cli", "save_config",
           "to_dict"]


def config_parser(cls: type, *, prog: str | None = None, description: str | None = None):
    """The jsonargparse parser of a config dataclass: --config, --print_config and one dotted option per field."""
    return command_parser(Command(cls), prog=prog, description=description)


@functools.cache
def _parser(cls: type):
    return config_parser(cls)


def _validated(cls: type[T], args: list[str], where: str) -> T:
    parser = _parser(cls)
    try:
        return instantiate(parser, parser.parse_args(args), cls)
    except (argparse.ArgumentError, TypeError, ValueError) as err:  # ValueError: a config's own checks
        message = explain_error(str(err), parser)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def from_dict(cls: type[T], data: dict, *, where: str = "config") -> T:
    """Build `cls` from plain data (parsed YAML), validating keys, types and Literal choices.

    `where` labels error messages (e.g. the YAML file). Values follow jsonargparse's command-line rules: an int
    is accepted for a float, and a string that reads as the declared type (`'3e-4'`, `'true'`); a number is not
    accepted for a string, and nothing is silently dropped.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a {cls.__name__} config must be a mapping, got {data!r}")
    check_keys(data, cls, where)
    parser = _parser(cls)
    try:
        return instantiate(parser, parser.parse_object(to_dict(data)), cls)
    except (argparse.ArgumentError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data (dicts, lists, scalars) from a config; Path becomes str, tuples lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, dict):
        return {to_dict(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, enum.Enum):
        return cfg.value
    return cfg


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Defaults, then the YAML file (with its `base:` chain), then the overrides (`--a.b VALUE`); validated."""
    args = ["--config", str(path)] if path is not None else []
    return _validated(cls, [*args, *overrides], str(path) if path is not None else "config")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML in field order, loadable again with `load_config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # default_flow_style=None keeps short leaf lists inline (`betas: [0.9, 0.98]`), sections as blocks.
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)
    atomic_write(path, text)  # a crash never leaves a half-written config.yaml beside the checkpoints


def parse_cli(cls: type[T], argv: list[str] | None = None, *, prog: str = "retina-pretrain",
              exit_on_error: bool = True, description: str | None = None) -> tuple[T, Path | None]:
    """`--config PATH`, dotted overrides, `--help`, `--print_config` -> (config, config path).

    Errors print `prog: error: ...` and exit 2; `exit_on_error=False` raises ValueError instead.
    """
    argv = list(argv) if argv is not None else None
    if not exit_on_error:
        args = list(argv or [])
        return _validated(cls, args, "config"), _config_path(args)
    parser = config_parser(cls, prog=prog, description=description)
    _, cfg = parse_command(parser, argv, prog=prog)
    return cfg, _config_path(argv if argv is not None else sys.argv[1:])


def _config_path(argv: list[str]) -> Path | None:
    """The last --config file given (each later one is merged over the earlier ones)."""
    path = None
    for i, token in enumerate(argv):
        if token.startswith("--config="):
            path = Path(token.partition("=")[2])
        elif token == "--config" and i + 1 < len(argv):
            path = Path(argv[i + 1])
    return path
