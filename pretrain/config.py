"""Typed configs: nested dataclasses, YAML files with `base:` inheritance, dotted CLI overrides.

A config section is a plain dataclass whose fields carry a docstring right below them; that docstring is
the schema's help text (shown by `--help-config`), in the style of litgpt/torchtitan:

    @dataclass
    class Optim:
        lr: float = 1e-3
        \"\"\"Peak learning rate.\"\"\"

Resolution order, later wins: dataclass defaults < YAML file (after merging its `base:` chain) < CLI
overrides. Everything is validated in one place, `from_dict`, so a typo or a wrong type fails before any
work starts, naming the dotted key (`optim.lr`) and suggesting the closest valid one.

CLI contract (`parse_cli`): the trainer's argparse handles its own flags and subcommands with
`parse_known_args` and passes the leftover arguments here. Those are `--config PATH`, `--help-config`
(prints `config_help` and exits 0) and dotted overrides `--optim.lr 3e-4` / `--optim.lr=3e-4`, whose
values are parsed as YAML (`3e-4`, `true`, `null`, `[224,224]`; quote a value to keep it a string).

Config dataclasses must live at module level: their annotations are resolved with
`typing.get_type_hints`, which needs the names in the module's globals.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import functools
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "apply_overrides",
    "config_help",
    "field_docs",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_cli",
    "save_config",
    "to_dict",
]


# ----------------------------------------------------------------------------- schema introspection


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string statement right after the annotated field), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # defined in a REPL or exec'd: no source, so no help text
            continue
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef))
        for stmt, nxt in zip(node.body, node.body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> list[dataclasses.Field]:
    # init=False fields are derived state, not something a user may set.
    return [f for f in dataclasses.fields(cls) if f.init]


def _section(tp: Any) -> type | None:
    """The dataclass behind `tp` (`Model` or `Model | None`), if any: its fields get dotted keys."""
    if dataclasses.is_dataclass(tp):
        return tp
    if _is_union(tp):
        sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return sections[0] if len(sections) == 1 else None
    return None


def _walk(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every dotted key of the schema, depth first, with its field and resolved type."""
    hints = _hints(cls)
    for f in _init_fields(cls):
        key = prefix + f.name
        yield key, f, hints[f.name]
        if (sub := _section(hints[f.name])) is not None:
            yield from _walk(sub, key + ".")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "{" + ", ".join(json.dumps(a) for a in args) + "}"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------- dict <-> dataclass


class _Mismatch(Exception):
    """A value that does not fit the declared type; turned into a ValueError naming the key."""


def from_dict(cls: type[T], data: dict, *, where: str = "config") -> T:
    """Build `cls` from plain data (parsed YAML), validating keys, types and Literal choices.

    `where` labels error messages (e.g. the YAML file). Numbers coerce where lossless (an int for a
    float, `1e6` for an int); strings never turn into bools, and nothing is silently dropped.
    """
    return _build(cls, data, "", where, cls)


def _build(cls: type, data: Any, prefix: str, where: str, root: type) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        name = prefix[:-1] or "<root>"
        raise ValueError(f"{where}: '{name}' must be a mapping of {cls.__name__} fields, got {data!r}")
    fields = {f.name: f for f in _init_fields(cls)}
    for key in data:
        if key not in fields:
            raise ValueError(f"{where}: unknown key '{prefix}{key}'" + _suggest(str(key), prefix, list(fields), root))
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], prefix + name, where, root)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing required key '{prefix}{name}'")
    return cls(**kwargs)


def _suggest(key: str, prefix: str, valid: list[str], root: type) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        hint = f"; did you mean '{prefix}{close[0]}'?"
    else:
        # A leaf given without its section (`--lr` for `optim.lr`) is the next most likely slip.
        same_leaf = [k for k, _, _ in _walk(root) if k.rsplit(".", 1)[-1] == key]
        hint = f"; did you mean '{same_leaf[0]}'?" if same_leaf else ""
    where = f" under '{prefix[:-1]}'" if prefix else ""
    return f"{hint} Valid keys{where}: {', '.join(valid)}"


def _coerce(tp: Any, value: Any, key: str, where: str, root: type) -> Any:
    try:
        return _convert(tp, value, key, where, root)
    except _Mismatch:
        got = f"{value!r} ({type(value).__name__})"
        raise ValueError(f"{where}: '{key}' expected {_type_name(tp)}, got {got}") from None


def _convert(tp: Any, value: Any, key: str, where: str, root: type) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: let X report its own, more precise, error
            return _convert(options[0], value, key, where, root)
        for option in options:
            try:
                return _convert(option, value, key, where, root)
            except (_Mismatch, ValueError):
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}{hint}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", where, root)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}: '{key}' expected {len(args)} items ({_type_name(tp)}), got {value!r}")
            return tuple(_coerce(a, v, f"{key}[{i}]", where, root) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", where, root) for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, key, where, root): _coerce(vt, v, f"{key}.{k}", where, root) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return value if isinstance(value, tp) else tp(value)
        except ValueError:
            raise _Mismatch from None
    if tp in _SCALARS:
        return _SCALARS[tp](value)
    raise TypeError(f"{where}: '{key}' has an unsupported annotation {tp!r}")


def _to_bool(v: Any) -> bool:
    # YAML already turns true/false/yes/no into bools; a string here is a typo, not a bool.
    if isinstance(v, bool):
        return v
    raise _Mismatch


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise _Mismatch
    if isinstance(v, int):
        return v
    if isinstance(v, (float, str)):
        try:
            return int(v) if isinstance(v, str) else _integral(v)
        except ValueError:
            pass
        try:
            return _integral(float(v))  # '1e6': PyYAML reads exponents without a dot as strings
        except ValueError:
            pass
    raise _Mismatch


def _integral(f: float) -> int:
    if f.is_integer():
        return int(f)
    raise ValueError(f)


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise _Mismatch
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)  # '3e-4' arrives as a string from PyYAML (YAML 1.1 wants '3.0e-4')
        except ValueError:
            pass
    raise _Mismatch


def _to_str(v: Any) -> str:
    # A bare number is a fine name or tag (`--run.name 2024`); bools and null are almost surely mistakes.
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise _Mismatch


def _to_path(v: Any) -> Path:
    if isinstance(v, (str, Path)):
        return Path(v)
    raise _Mismatch


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, Path: _to_path}


def to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data (dicts, lists, scalars) from a config; Path becomes str, tuples lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in _init_fields(type(cfg))}
    if isinstance(cfg, dict):
        return {to_dict(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, enum.Enum):
        return cfg.value
    return cfg


# ----------------------------------------------------------------------------- YAML files and overrides


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping; a top-level `base:` (a path or a list, relative to this file) is merged under it."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ValueError(f"config 'base' cycle: {cycle}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, (str, Path)) else bases:
        merged = _deep_merge(merged, load_yaml(path.parent / base, (*_chain, path)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, child: dict) -> dict:
    """Child wins; mappings merge key by key, anything else (lists included) is replaced whole."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--a.b VALUE` / `--a.b=VALUE` overrides to a copy of `data`; values are parsed as YAML.

    Keys are not checked here: `from_dict` rejects an unknown one with a suggestion.
    """
    out = _deep_merge({}, data)
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"expected a '--section.key VALUE' override, got {token!r}")
        key, eq, raw = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(overrides) or overrides[i + 1].startswith("--"):
                raise ValueError(f"override '--{key}' has no value (write '--{key} VALUE' or '--{key}=VALUE')")
            i += 1
            raw = overrides[i]
        i += 1
        _set_dotted(out, key, yaml.safe_load(raw))
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:  # absent, or an Optional section left at None: the override creates it
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ValueError(f"cannot set '{key}': '{'.'.join(parents[: depth + 1])}' is {child!r}, not a section")
        node = child
    node[leaf] = value


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Defaults, then the YAML file (with its `base:` chain), then the overrides; validated as `cls`."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, list(overrides)), where=str(path) if path else "config")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML in field order, loadable again with `load_config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # default_flow_style=None keeps short leaf lists inline (`betas: [0.9, 0.98]`), sections as blocks.
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- help and CLI


def config_help(cls: type) -> str:
    """Every dotted key with its type, default (as YAML, so it can be pasted on the CLI) and docstring."""
    lines = []
    for key, f, tp in _walk(cls):
        doc = field_docs(_owner(cls, key)).get(f.name, "")
        if f.default is not dataclasses.MISSING:
            default = f" = {json.dumps(to_dict(f.default))}"
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            default = "" if dataclasses.is_dataclass(value) else f" = {json.dumps(to_dict(value))}"
        else:
            default = " (required)"
        lines.append(f"--{key}: {_type_name(tp)}{default}")
        if doc:
            lines.append(textwrap.indent(doc, "    "))
    return "\n".join(lines)


def _owner(cls: type, key: str) -> type:
    """The dataclass that declares the last part of a dotted key."""
    for part in key.split(".")[:-1]:
        cls = _section(_hints(cls)[part])
    return cls


def parse_cli(
    cls: type[T], argv: list[str] | None = None, *, prog: str = "retina-pretrain", exit_on_error: bool = True
) -> tuple[T, Path | None]:
    """`--config PATH`, `--help-config` and dotted overrides -> (config, config path).

    Errors print `prog: error: ...` and exit 2, like argparse; `exit_on_error=False` raises ValueError.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path: Path | None = None
    overrides: list[str] = []
    try:
        i = 0
        while i < len(argv):
            token = argv[i]
            if token == "--help-config":
                print(config_help(cls))
                raise SystemExit(0)
            if token == "--config" or token.startswith("--config="):
                if config_path is not None:
                    raise ValueError("--config given twice")
                if token == "--config":
                    if i + 1 >= len(argv):
                        raise ValueError("--config needs a path")
                    i += 1
                    token = "--config=" + argv[i]
                config_path = Path(token.partition("=")[2])
            else:
                overrides.append(token)
            i += 1
        return load_config(cls, config_path, overrides), config_path
    except (ValueError, OSError) as err:
        if not exit_on_error:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
