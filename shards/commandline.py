"""Command lines from dataclasses, on jsonargparse: one style for retina-shards, retina-pretrain and retina-cluster.

A command's options are a dataclass whose fields carry a docstring right below them (litgpt / LightningCLI
style); jsonargparse turns it into the parser, so the docstrings are the `--help`:

    @dataclass
    class Optim:
        lr: float = 1e-3
        \"\"\"Peak learning rate.\"\"\"

Every command gets `--help`, `--config FILE` (YAML; a top-level `base:` names parent files, relative to the
file, merged under it), `--print_config` (the resolved options as YAML, loadable with `--config`) and one option
per field, nested sections dotted (`--run.steps 20`). Values are YAML: `3e-4`, `true`, `null`, `[224,224]`,
`{depth: 2}`. Later options win over earlier ones and over the config file they follow.

The spellings of the argparse era keep working (`legacy_argv`): dashes for underscores (`--eval-shards`),
`--no-linear-probe` for `--linear_probe false`, a bare `--report` for `--report true`, a list as separate
values or repeated flags (`--k-shots 1 5 10`, `--source A --source B`), and per-command aliases (`-n`).

This module lives in shards, the lowest package with a command line, because imports run
cluster -> pretrain -> shards and every CLI uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonargparse
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from shards.printable import printable, printable_text

__all__ = ["Command", "ConfigFile", "check_keys", "command_parser", "deep_merge", "explain_error", "field_docs",
           "instantiate", "legacy_argv", "load_yaml", "parse_command", "schema_keys", "subcommand_parser"]

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)

HELP_CONFIG_GONE = ("--help-config is gone: --help lists every option (dotted, with its type, default and "
                    "docstring) and --print_config prints the resolved configuration as YAML")


# ----------------------------------------------------------------------------- YAML files with `base:`


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping; a top-level `base:` (a path or a list, relative to this file) is merged under it."""
    shown, path = path, Path(path).resolve()  # messages name the file as it was given
    if path in _chain:
        raise ValueError(f"config 'base' cycle: {' -> '.join(str(p) for p in (*_chain, path))}")
    data = _parse_yaml_file(shown)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{shown}: a config file must hold a mapping, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, (str, Path)) else bases:
        merged = deep_merge(merged, load_yaml(path.parent / base, (*_chain, path)))
    return deep_merge(merged, data)


def _parse_yaml_file(path: str | Path) -> Any:
    """The YAML document of a file; any problem is one ValueError line naming the file (never a parser traceback,
    never the raw bytes of a binary file)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
        if "\0" in text:
            raise ValueError("NUL byte")
    except ValueError:
        raise ValueError(f"{path}: not a YAML text file (binary; starts {printable(raw, 24)})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{at}: {printable_text(what)}") from None


def deep_merge(base: Mapping, child: Mapping) -> dict:
    """Child wins; mappings merge key by key, anything else (lists included) is replaced whole."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- the schema of a dataclass


def _section(tp: Any) -> type | None:
    """The dataclass behind `tp` (`Model` or `Model | None`), if any: its fields get dotted keys."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return sections[0] if len(sections) == 1 else None
    return None


@functools.cache
def schema_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a dataclass schema -> its type, depth first (init=False fields are derived state)."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.init:
            keys[prefix + f.name] = hints[f.name]
            if (sub := _section(hints[f.name])) is not None:
                keys.update(schema_keys(sub, prefix + f.name + "."))
    return keys


def check_keys(data: Any, cls: type, where: str, prefix: str = "") -> None:
    """Raise ValueError naming the first unknown key of `data` (dotted) and the closest valid one."""
    if not isinstance(data, Mapping):
        return
    keys = schema_keys(cls)
    for key, value in data.items():
        dotted = prefix + str(key)
        if dotted not in keys:
            raise ValueError(f"{where}: unknown key '{dotted}'" + _suggest(dotted, list(keys)))
        if _section(keys[dotted]) is not None:
            check_keys(value, cls, where, dotted + ".")


def _suggest(key: str, valid: list[str]) -> str:
    parent = key.rpartition(".")[0]
    siblings = [k for k in valid if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(key, siblings, n=1) or difflib.get_close_matches(key, valid, n=1)
    if not close:  # a leaf given without its section (`lr` for `engine.lr`) is the next most likely slip
        close = [k for k in valid if k.rpartition(".")[2] == key.rpartition(".")[2]][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    names = ", ".join(k.rpartition(".")[2] for k in siblings)
    return f"{hint} Valid keys{f' under {parent!r}' if parent else ''}: {names}"


class ConfigFile(ActionConfigFile):
    """`--config FILE`: YAML with its `base:` chain resolved, keys checked against the command's dataclass,
    every error prefixed with the file's name."""

    def __call__(self, parser, cfg, values, option_string=None):
        where = str(values)
        try:
            data = load_yaml(values)
            if (schema := getattr(parser, "schema", None)) is not None:
                check_keys(data, schema, where)
            self.apply_config(parser, cfg, self.dest, yaml.safe_dump(data))
        except (OSError, ValueError, TypeError, argparse.ArgumentError) as err:
            message = str(err)
            raise TypeError(message if message.startswith(where) else f"{where}: {message}") from None
        cfg[self.dest][-1] = Path(values)  # the file, not the merged text, is what was given


# ----------------------------------------------------------------------------- parsers


@dataclasses.dataclass
class Command:
    """One command: its options dataclass, its one-line help, and how its argparse-era spellings map."""

    schema: type
    help: str = ""
    positional: tuple[str, ...] = ()
    """Fields given by position (in this order); optional ones are those with a default."""
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    """Old flag (`--eval`, `-n`) -> field name."""
    removed: dict[str, str] = dataclasses.field(default_factory=dict)
    """Field-style name of a removed option (`caption_decoder_heads`) -> why it is gone (an error if given)."""
    config_flag: str = "--config"
    """The options-file flag (another name where a field is called `config`)."""


def command_parser(command: Command, *, prog: str | None = None, description: str | None = None,
                   epilog: str | None = None) -> ArgumentParser:
    """The parser of one command: --config, --print_config, then one option per field (positional ones first)."""
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, exit_on_error=False,
                            formatter_class=_Formatter)
    parser.schema = command.schema  # type: ignore[attr-defined]  # read by ConfigFile
    parser.command = command  # type: ignore[attr-defined]
    hints = typing.get_type_hints(command.schema)
    fields = {f.name: f for f in dataclasses.fields(command.schema)}
    docs = field_docs(command.schema)
    for name in command.positional:
        f = fields[name]
        default = _default(f)
        nargs = None if default is dataclasses.MISSING else "?"
        parser.add_argument(name, type=hints[name], nargs=nargs, help=docs.get(name, ""),
                            **({} if nargs is None else {"default": default}))
    parser.add_argument(command.config_flag, action=ConfigFile,
                        help="YAML file of options (a top-level `base:` names files merged under it); "
                             "options after it override it")
    parser.add_class_arguments(command.schema, nested_key=None, as_group=False,
                                skip=set(command.positional) or None)
    return parser


class _Formatter(jsonargparse.DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (types, defaults) with descriptions and epilogs kept as written."""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string statement right after the annotated field), base classes first."""
    from docstring_parser import parse_from_object

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update({p.arg_name: inspect.cleandoc(p.description)
                         for p in parse_from_object(klass).params if p.description})
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def subcommand_parser(commands: Mapping[str, Command], *, prog: str, description: str | None = None
                      ) -> ArgumentParser:
    """A parser whose first positional picks one of `commands` (each a command_parser)."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, formatter_class=_Formatter)
    parser.subparsers = {name: command_parser(command, description=command.help)  # type: ignore[attr-defined]
                         for name, command in commands.items()}
    sub = parser.add_subcommands(dest="command", required=True)
    for name, command in commands.items():
        sub.add_subcommand(name, parser.subparsers[name], help=command.help)  # type: ignore[attr-defined]
    return parser


# ----------------------------------------------------------------------------- argparse-era spellings


def _is_bool(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                          and set(typing.get_args(tp)) == {bool, type(None)})


def _is_list(tp: Any) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) is list or a is list for a in args)


def legacy_argv(argv: Sequence[str], command: Command) -> list[str]:
    """Rewrite the argparse-era spellings of `command`'s top-level options into jsonargparse's (module doc)."""
    hints = {f.name: typing.get_type_hints(command.schema)[f.name] for f in dataclasses.fields(command.schema)}
    out: list[str] = []
    emptied: set[str] = set()
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        flag, eq, value = token.partition("=")
        name = command.aliases.get(flag, flag.lstrip("-").replace("-", "_"))
        negate = name not in hints and name.startswith("no_") and _is_bool(hints.get(name[3:]))
        name = name[3:] if negate else name
        if not flag.startswith("-") or name not in hints or name in command.positional:
            out.append(token)
        elif _is_bool(hints[name]):
            if not eq and tokens and tokens[0].lower() in ("true", "false"):
                value, eq = tokens.pop(0), "="
            out.append(f"--{name}={'false' if negate else value if eq else 'true'}")
        elif _is_list(hints[name]) and not (value if eq else tokens[0] if tokens else "").startswith("["):
            values = [value] if eq else []
            while not eq and tokens and not tokens[0].startswith("-"):
                values.append(tokens.pop(0))
            if name not in emptied:  # argparse's nargs / action="append": the given values replace the default
                out.append(f"--{name}=[]")
                emptied.add(name)
            out += [f"--{name}+={v}" for v in values]
        else:
            out.append(f"--{name}" + (f"={value}" if eq else ""))
    return out


# ----------------------------------------------------------------------------- parsing


def instantiate(parser: ArgumentParser, ns: Namespace, schema: type) -> Any:
    """The dataclass instance of a parsed namespace (nested sections are built by jsonargparse)."""
    init = parser.instantiate(ns)
    return schema(**{f.name: init[f.name] for f in dataclasses.fields(schema) if f.init and f.name in init})


def parse_command(parser: ArgumentParser, argv: Sequence[str] | None = None, *, prog: str | None = None
                  ) -> tuple[str | None, Any]:
    """(subcommand or None, options dataclass) from argv; errors print `PROG: error: ...` and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or parser.prog
    if "--help-config" in argv:
        _fail(prog, HELP_CONFIG_GONE)
    subparsers: dict[str, ArgumentParser] = getattr(parser, "subparsers", {})
    at = next((i for i, a in enumerate(argv) if a in subparsers), None)
    target = subparsers[argv[at]] if at is not None else parser
    removed = target.command.removed if hasattr(target, "command") else {}
    for flag in (token.partition("=")[0] for token in argv if token.startswith("-")):
        if why := removed.get(flag.lstrip("-").replace("-", "_")):
            _fail(prog, f"{flag} was removed: {why}")
    if hasattr(target, "command"):
        start = 0 if at is None else at + 1
        argv = argv[:start] + legacy_argv(argv[start:], target.command)
    try:
        ns = parser.parse_args(argv)
        if at is None:
            return None, instantiate(parser, ns, parser.schema)  # type: ignore[attr-defined]
        return ns["command"], instantiate(target, ns[ns["command"]], target.schema)
    except (argparse.ArgumentError, ValueError, TypeError) as err:
        _fail(prog, explain_error(str(err), target))


def explain_error(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's message, plus the closest option for each unrecognized one."""
    found = re.match(r"[Uu]nrecognized arguments: (.*)", message)
    if not found:
        return message
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for token in found.group(1).split():
        flag = token.partition("=")[0]
        leaf = flag.rpartition(".")[2].lstrip("-")
        close = [o for o in options if o.rpartition(".")[2].lstrip("-") == leaf and o != flag][:1]
        if flag.startswith("--") and (close := close or difflib.get_close_matches(flag, options, n=1)):
            hints.append(f"{flag}: did you mean {close[0]}?")
    return message + (f" ({'; '.join(hints)})" if hints else "") + "; see --help"


def _fail(prog: str, message: str) -> typing.NoReturn:
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())  # jsonargparse wraps lines
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
